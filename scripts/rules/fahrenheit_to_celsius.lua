-- fahrenheit_to_celsius.lua - normalise units so that every consumer sees
-- one unit per quantity: temperature in C (from F or K), pressure in hPa
-- (from Pa, kPa, inHg), humidity in % (from a 0..1 ratio).  The reading's
-- "unit" field and a "unit" header say what it is now; the original unit
-- is kept in "unit_in" when it changed.  Payloads that are not readings
-- pass unchanged.

local function round(x, digits)
	local m = 10 ^ digits
	return math.floor(x * m + 0.5) / m
end

-- unit -> { to = unit, convert = function }
local conversions = {
	F     = { to = "C",   f = function(v) return (v - 32) * 5 / 9 end },
	degF  = { to = "C",   f = function(v) return (v - 32) * 5 / 9 end },
	K     = { to = "C",   f = function(v) return v - 273.15 end },
	degC  = { to = "C",   f = function(v) return v end },
	Pa    = { to = "hPa", f = function(v) return v / 100 end },
	kPa   = { to = "hPa", f = function(v) return v * 10 end },
	inHg  = { to = "hPa", f = function(v) return v * 33.8639 end },
	ratio = { to = "%",   f = function(v) return v * 100 end },
}

function on_message(msg)
	local r = msg:json()
	if type(r) ~= "table" or type(r.value) ~= "number" or
	   type(r.unit) ~= "string" then
		return msg
	end
	local c = conversions[r.unit]
	if c then
		r.unit_in = r.unit
		r.value = round(c.f(r.value), 2)
		r.unit = c.to
		msg.payload = r                 -- a table is sent as JSON
	end
	msg.headers.unit = r.unit
	return msg
end

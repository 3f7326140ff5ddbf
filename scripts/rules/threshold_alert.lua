-- threshold_alert.lua - pass every reading on, and send an alert to an
-- alerts topic when a reading crosses its sensor's limits (once when it
-- goes out of range, once when it comes back: no alert storm).
--
-- Readings are JSON: {"device","site","sensor","value","unit","seq","ts"}
-- (what iotrouter-sim publishes).  The key should be the device, so that
-- router.state() is per device.
--
-- Settings (transform parameter vars = [ "NAME=VALUE", ... ]):
--   alerts_topic      where alerts go (default iot.alerts)
--   temperature_max   upper limit for temperature (default 30)

local alerts_topic = router.vars.alerts_topic or "iot.alerts"

local limits = {
	temperature = { max = tonumber(router.vars.temperature_max) or 30 },
	humidity    = { min = 10, max = 80 },
	pressure    = { min = 950, max = 1050 },
}

local function out_of_range(limit, value)
	return (limit.max and value > limit.max) or
	       (limit.min and value < limit.min) or false
end

function on_message(msg)
	local r = msg:json()
	if type(r) ~= "table" or type(r.value) ~= "number" then
		return msg              -- not a reading: not ours to judge
	end
	local limit = limits[r.sensor]
	if not limit then
		return msg
	end
	local state = router.state()            -- this device's table
	local was = state[r.sensor] or false
	local now = out_of_range(limit, r.value)
	if now == was then
		return msg
	end
	state[r.sensor] = now
	local alert = {
		alert = now and "out of range" or "back in range",
		device = r.device, site = r.site, sensor = r.sensor,
		value = r.value, unit = r.unit, min = limit.min, max = limit.max,
		seq = r.seq, ts = r.ts,
	}
	-- The reading goes on as it was; the alert is a second message
	-- (same key and headers) to the alerts topic.
	return { msg, { kafka_topic = alerts_topic, payload = alert,
	                headers = { alert = alert.alert } } }
end

-- geofence.lua - alert when a vehicle enters or leaves a zone.  Positions
-- ({"vin","lat","lon","speed","ts"}) pass on unchanged; on each crossing an
-- alert goes to the geofence topic, keyed by the VIN like the positions.
-- Zones are circles (centre and radius in metres) or polygons (lat/lon
-- corners).  The key should be the VIN, so router.state() is per vehicle.
--
-- Settings (vars): geofence_topic (default fleet.geofence).

local topic = router.vars.geofence_topic or "fleet.geofence"

local zones = {
	{ name = "depot", circle = { lat = 52.3700, lon = 4.8900, radius = 500 } },
	{ name = "city-centre", polygon = {
		{ 52.3600, 4.8800 }, { 52.3600, 4.9100 },
		{ 52.3800, 4.9100 }, { 52.3800, 4.8800 } } },
}

local R = 6371000   -- metres

local function distance(lat1, lon1, lat2, lon2)
	local p1, p2 = math.rad(lat1), math.rad(lat2)
	local dp, dl = p2 - p1, math.rad(lon2 - lon1)
	local a = math.sin(dp / 2) ^ 2 +
	          math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ^ 2
	return 2 * R * math.asin(math.sqrt(a))
end

-- Ray casting: is the point inside the polygon?
local function inside_polygon(poly, lat, lon)
	local inside = false
	local j = #poly
	for i = 1, #poly do
		local yi, xi = poly[i][1], poly[i][2]
		local yj, xj = poly[j][1], poly[j][2]
		if (yi > lat) ~= (yj > lat) and
		   lon < (xj - xi) * (lat - yi) / (yj - yi) + xi then
			inside = not inside
		end
		j = i
	end
	return inside
end

local function inside(zone, lat, lon)
	if zone.circle then
		local c = zone.circle
		return distance(c.lat, c.lon, lat, lon) <= c.radius
	end
	return inside_polygon(zone.polygon, lat, lon)
end

function on_message(msg)
	local p = msg:json()
	if type(p) ~= "table" or type(p.lat) ~= "number" or
	   type(p.lon) ~= "number" then
		return msg
	end
	local state = router.state()            -- zone name -> inside?
	local out = { msg }
	for _, zone in ipairs(zones) do
		local now = inside(zone, p.lat, p.lon)
		local was = state[zone.name]
		-- The first position only sets the state: no alert for where a
		-- vehicle already is when the router starts.
		if was ~= nil and now ~= was then
			out[#out + 1] = {
				kafka_topic = topic,
				payload = { vin = p.vin, zone = zone.name,
				            event = now and "enter" or "exit",
				            lat = p.lat, lon = p.lon, ts = p.ts },
				headers = { event = now and "enter" or "exit" },
			}
		end
		state[zone.name] = now
	end
	return out
end

-- window_stats.lua - per-device tumbling windows: every N seconds, one
-- message per device and sensor with the count, average, minimum and
-- maximum of its readings; the raw readings are dropped (filter and
-- aggregate at the edge).
--
-- Windows follow the router's clock (msg.time, the receive time): a window
-- [start, start + N) is sent by the first on_tick at or after its end, or
-- when a later reading of the same sensor arrives, and on shutdown
-- (on_stop) with "partial": true.  The transform needs tick_ms (e.g. 1000).
--
-- Settings (vars): window_seconds (default 10), stats_topic (default
-- iot.stats), keep_readings ("true" to pass the readings on as well).

local N = tonumber(router.vars.window_seconds) or 10
local stats_topic = router.vars.stats_topic or "iot.stats"
local keep = router.vars.keep_readings == "true"

local function round(x) return math.floor(x * 1000 + 0.5) / 1000 end

local function send(key, sensor, w, partial)
	router.emit{
		topic = stats_topic, key = key,
		payload = {
			device = w.device, site = w.site, sensor = sensor,
			unit = w.unit, window_start = w.start,
			window_end = w.start + N, count = w.count,
			avg = round(w.sum / w.count), min = w.min, max = w.max,
			partial = partial or nil,
		},
	}
end

function on_message(msg)
	local r = msg:json()
	if type(r) ~= "table" or type(r.value) ~= "number" or not r.sensor then
		return msg
	end
	local key = msg.key or r.device
	local windows = router.state(key)       -- sensor -> open window
	local start = math.floor(msg.time / N) * N
	local w = windows[r.sensor]
	if w and w.start ~= start then          -- a later window began
		send(key, r.sensor, w)
		w = nil
	end
	if not w then
		w = { start = start, count = 0, sum = 0, min = r.value,
		      max = r.value, device = r.device, site = r.site,
		      unit = r.unit }
		windows[r.sensor] = w
	end
	w.count = w.count + 1
	w.sum = w.sum + r.value
	w.min = math.min(w.min, r.value)
	w.max = math.max(w.max, r.value)
	if keep then
		return msg
	end
	return nil
end

-- Send the windows that have ended; forget devices with none open.
local function flush(now, all)
	for key, windows in router.keys() do
		local sensors = {}
		for sensor in pairs(windows) do sensors[#sensors + 1] = sensor end
		table.sort(sensors)             -- same order every run
		for _, sensor in ipairs(sensors) do
			local w = windows[sensor]
			if all or w.start + N <= now then
				send(key, sensor, w, all and w.start + N > now)
				windows[sensor] = nil
			end
		end
		if next(windows) == nil then
			router.forget(key)
		end
	end
end

function on_tick(now)
	flush(now, false)
end

function on_stop()
	flush(router.now(), true)
end

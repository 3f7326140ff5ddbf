-- downsample.lua - keep one reading per device and sensor per interval and
-- drop the rest at the edge: the first reading goes on, then the next one
-- at least interval_seconds later (by the router's clock, msg.time).
--
-- Settings (vars): interval_seconds (default 60).

local interval = tonumber(router.vars.interval_seconds) or 60

function on_message(msg)
	local r = msg:json()
	local sensor = type(r) == "table" and r.sensor or msg.topic
	local kept = router.state()             -- sensor -> time last kept
	local last = kept[sensor]
	if last and msg.time - last < interval then
		return nil
	end
	kept[sensor] = msg.time
	return msg
end

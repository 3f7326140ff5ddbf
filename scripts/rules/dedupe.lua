-- dedupe.lua - drop repeated readings: a message delivered twice (the same
-- device, sensor and seq, or an older seq: MQTT QoS 1 and restarts give
-- at-least-once delivery), and a value that has not changed since the last
-- one sent for that device and sensor (report by exception).  An unchanged
-- value still goes on once every heartbeat_seconds, so consumers can tell
-- a quiet sensor from a dead one.
--
-- Settings (vars): heartbeat_seconds (default 60).

local heartbeat = tonumber(router.vars.heartbeat_seconds) or 60

function on_message(msg)
	local r = msg:json()
	if type(r) ~= "table" or not r.sensor then
		return msg
	end
	local state = router.state()            -- this device's table
	local last = state[r.sensor]
	if last then
		if r.seq and last.seq and r.seq <= last.seq then
			return nil              -- delivered before
		end
		last.seq = r.seq
		if r.value == last.value and msg.time - last.sent < heartbeat then
			return nil              -- nothing new to say
		end
	else
		last = {}
		state[r.sensor] = last
	end
	last.seq = r.seq
	last.value = r.value
	last.sent = msg.time
	return msg
end

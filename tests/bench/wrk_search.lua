-- wrk script of tests/bench/concurrency.py: POST distinct search bodies, one JSON document a line of
-- the file named by the first script argument; each wrk thread starts at its own offset.
local threads = 0

function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

function init(args)
  bodies = {}
  for line in io.lines(args[1]) do
    bodies[#bodies + 1] = line
  end
  n = (tid or 0) * 50000
  headers = {["Content-Type"] = "application/json"}
end

function request()
  n = n + 1
  return wrk.format("POST", nil, headers, bodies[(n % #bodies) + 1])
end

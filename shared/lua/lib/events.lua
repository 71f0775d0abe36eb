-- The event entry shape, for scripts: the same fields shared.store.events.entry() writes from Python.
-- Prepended to every script by shared.store.conn.load_script.
local function add_event(stream, max_len, event_type, job_id, collection, kind, state, data)
  return redis.call('XADD', stream, 'MAXLEN', '~', max_len, '*', 'type', event_type, 'job_id', job_id,
    'collection', collection, 'kind', kind, 'state', state, 'data', data)
end

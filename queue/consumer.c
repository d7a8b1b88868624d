/* queue/consumer.c — the delivery side of the Redis queue: its own hiredis connection on the
 * worker's loop, the claim/adopt/complete scripts, body reads, reports and admin operations.
 * Not the ingest side (queue.c) and not a transport: it never talks to a destination. */
#include "queue/consumer.h"
#include "queue/redis_conn.h"

#include <errno.h>
#include <limits.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/* ---- the scripts ----
 *
 * Every script gets one key, KEYS[1] = `<p>:{s<k>}:sched` of the shard it works on, and derives
 * the other keys of that shard from it (P = `<p>:{s<k>}:`): every key a script touches carries the
 * one hash tag `{s<k>}`, so on Redis Cluster it lives in the slot of KEYS[1]. Time is Redis's
 * (TIME), the same for every node, so leases do not depend on node clocks. Work items are
 * `<qid>` (a message not yet split, in its own shard) or `<qid>/<dest>` (in the destination's
 * home shard). Reads come before the first write wherever a script can refuse. */

/* QC_XSTR spells a numeric macro into a script's text. */
#define QC_STR(x) #x
#define QC_XSTR(x) QC_STR(x)

#define LUA_PRELUDE                                                                                \
    "local P = string.sub(KEYS[1], 1, -6)\n"                                                       \
    "local T = redis.call('TIME')\n"                                                               \
    "local now = tonumber(T[1]) * 1000 + math.floor(tonumber(T[2]) / 1000)\n"                      \
    "local function bulk(cmd, key, a, w)\n"                                                        \
    "  local step = 512 * w\n"                                                                     \
    "  for i = 1, #a, step do\n"                                                                   \
    "    redis.call(cmd, key, unpack(a, i, math.min(i + step - 1, #a)))\n"                         \
    "  end\n"                                                                                      \
    "end\n"                                                                                        \
    "local function dest_of(x)\n"                                                                  \
    "  local s = string.find(x, '/', 1, true)\n"                                                   \
    "  if s then return string.sub(x, s + 1) end\n"                                                \
    "  return nil\n"                                                                               \
    "end\n"                                                                                        \
    "local function unlease(x)\n"                                                                  \
    "  redis.call('ZREM', P .. 'leases', x)\n"                                                     \
    "  redis.call('HDEL', P .. 'lease', x)\n"                                                      \
    "  local d = dest_of(x)\n"                                                                     \
    "  if d and redis.call('HINCRBY', P .. 'conc', d, -1) <= 0 then\n"                             \
    "    redis.call('HDEL', P .. 'conc', d)\n"                                                     \
    "  end\n"                                                                                      \
    "end\n"                                                                                        \
    "local function requeue(x, at)\n"                                                              \
    "  if redis.call('HEXISTS', P .. 'it:' .. x, 'held') == 1 then\n"                              \
    "    redis.call('ZADD', P .. 'held', now, x)\n"                                                \
    "  else\n"                                                                                     \
    "    redis.call('ZADD', KEYS[1], at, x)\n"                                                     \
    "  end\n"                                                                                      \
    "end\n"

/* CLAIM. ARGV: 1 token prefix, 2 lease ms, 3 work items to lease, 4 concurrency per destination,
 * 5 crashed attempts before dead-lettering, 6 how many due entries to look at, 7 new (unsplit)
 * messages to lease, 8 largest first body chunk to return, 9 anchor: the last entry of the
 * blocked run that the previous CLAIM of this shard saw ('' none), 10 its score then. Returns
 * {now, {item, crashes} dead-lettered..., {{item, token, tries, crashes, record, version, first
 * chunk}...}, more, busy, anchor, anchor score}; record, version and first chunk (as READ returns
 * them) only for a new message, nil for a work item: |more| is 1 when a work item could have been
 * leased but the batch was full; |busy| is 1 when due entries or expired leases are left behind
 * (the consumer looks at this shard again without waiting for a sweep). Each destination's
 * concurrency counter is read once per script (a local copy follows the leases it takes), and
 * once the batch is full and |more| known no further item is looked at. The lease writes are
 * batched: one ZREM, one ZADD and one HSET for all the entries leased (in steps of 512), one
 * HINCRBY per destination; a redis.call costs more than the command it runs (about 1.5 µs in
 * Redis 7.0).
 *
 * The blocked run is the due entries at the head that are items of one destination at its
 * concurrency limit: the backlog of a saturated destination, oldest first. Without an anchor a
 * claim looks at the first ARGV 6 due entries only, so a run longer than that hid everything
 * behind it: the shard's new messages (mail to any destination) and other destinations' items
 * waited until the backlog shrank. The script returns the last entry of the run it saw, with its
 * score ('' when the head is no such run). Given one, it looks at a short
 * head window (where a slot freed for that destination is taken, oldest item first); when the run
 * goes on past that window and the anchor is still there with the same score (not leased and put
 * back meanwhile), it finds the anchor with ZRANK and looks at up to ARGV 6 entries behind it,
 * which also moves the anchor on; else it looks on from the head window as without an anchor.
 * Entries join the due list at its tail (due now), so what was in the run stays in it; a retry
 * that falls due inside it, or an entry that joins in the anchor's own millisecond and sorts
 * before it, is found when the consumer passes no anchor, at least once a second
 * (QC_RESCAN_MS). */
static const char lua_claim[] = LUA_PRELUDE
    "local lease_ms, batch = tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    "local climit, cmax, scan = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])\n"
    "local bbatch, pmax = tonumber(ARGV[7]), tonumber(ARGV[8])\n"
    "local dead = {}\n"
    "local exp = redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', now, 'LIMIT', 0, 64)\n"
    "for _, x in ipairs(exp) do\n"
    "  unlease(x)\n"
    "  local it = P .. 'it:' .. x\n"
    "  local n = redis.call('HINCRBY', it, 'crashes', 1)\n"
    "  if n >= cmax then\n"
    "    redis.call('ZADD', P .. 'dead', now, x)\n"
    "    redis.call('HSET', it, 'why', 'lease expired ' .. n .. ' times without completion')\n"
    "    redis.call('HINCRBY', P .. 'stats', 'dead', 1)\n"
    "    dead[#dead + 1] = {x, n}\n"
    "  else\n"
    "    requeue(x, now)\n"
    "  end\n"
    "end\n"
    "local out, full, conc, ni, nb, more = {}, {}, {}, 0, 0, 0\n"
    "local zr, za, hs, ci = {}, {}, {}, {}\n"
    "local rlast, rdest, lead, seen = nil, nil, true, 0\n"
    "local anchor, head = ARGV[9], scan\n"
    "if #anchor > 0 then head = math.min(scan, batch + bbatch + 16) end\n"
    "local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, head)\n"
    "for pass = 1, 2 do\n"
    "  for _, x in ipairs(due) do\n"
    "    if ni >= batch and nb >= bbatch and more == 1 then break end\n"
    "    seen = seen + 1\n"
    "    local d = dest_of(x)\n"
    "    local ok, blocked = false, false\n"
    "    if d then\n"
    "      if full[d] then blocked = true\n"
    "      elseif not (ni >= batch and more == 1) then\n"
    "        local n = conc[d]\n"
    "        if not n then n = tonumber(redis.call('HGET', P .. 'conc', d) or '0') end\n"
    "        conc[d] = n\n"
    "        if n >= climit then\n"
    "          full[d] = true\n"
    "          blocked = true\n"
    "        elseif ni < batch then\n"
    "          ok = true\n"
    "          ni = ni + 1\n"
    "          conc[d] = n + 1\n"
    "        else\n"
    "          more = 1\n"
    "        end\n"
    "      end\n"
    "    elseif nb < bbatch then\n"
    "      ok = true\n"
    "      nb = nb + 1\n"
    "    end\n"
    "    if ok then\n"
    "      local tok = ARGV[1] .. (#out + 1)\n"
    "      zr[#zr + 1] = x\n"
    "      za[#za + 1] = now + lease_ms\n"
    "      za[#za + 1] = x\n"
    "      hs[#hs + 1] = x\n"
    "      hs[#hs + 1] = tok\n"
    "      local h = redis.call('HMGET', P .. 'it:' .. x, 'tries', 'crashes')\n"
    "      local env, ver, b = false, false, false\n"
    "      if d then ci[d] = (ci[d] or 0) + 1\n"
    "      else\n"
    "        env = redis.call('GET', P .. 'env:' .. x)\n"
    "        if env then\n"
    "          ver = redis.call('HGET', P .. 'm:' .. x, 'ver') or '0'\n"
    "          b = redis.call('LINDEX', P .. 'body:' .. x, 0)\n"
    "          if b and #b > pmax then b = false end\n"
    "        end\n"
    "      end\n"
    "      out[#out + 1] = {x, tok, h[1] or '0', h[2] or '0', env, ver, b}\n"
    "    elseif lead then\n"
    "      if blocked and (rdest == nil or rdest == d) then\n"
    "        rlast = x\n"
    "        rdest = d\n"
    "      else\n"
    "        lead = false\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  if pass == 2 or seen < head or head >= scan then break end\n"
    "  local from, n = head, scan - head\n"
    "  if lead and rdest and dest_of(anchor) == rdest and\n"
    "     redis.call('ZSCORE', KEYS[1], anchor) == ARGV[10] then\n"
    "    local r = redis.call('ZRANK', KEYS[1], anchor)\n"
    "    if r + 1 > head then\n"
    "      seen = seen + (r + 1 - head)\n"
    "      from, n, rlast = r + 1, scan, anchor\n"
    "    end\n"
    "  end\n"
    "  due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', from, n)\n"
    "end\n"
    "bulk('ZREM', KEYS[1], zr, 1)\n"
    "bulk('ZADD', P .. 'leases', za, 2)\n"
    "bulk('HSET', P .. 'lease', hs, 2)\n"
    "for d, n in pairs(ci) do redis.call('HINCRBY', P .. 'conc', d, n) end\n"
    "local busy = 0\n"
    "if #exp >= 64 or seen > #out then busy = 1 end\n"
    "local rs = rlast and redis.call('ZSCORE', KEYS[1], rlast)\n"
    "return {tostring(now), dead, out, more, busy, rlast or '', rs or ''}\n";

/* ADOPT (destination home shard). ARGV: 1 token prefix, 2 lease ms, 3 concurrency per
 * destination, 4 how many items the caller may lease now, 5... the work items of new messages.
 * An item that exists already in any state is skipped (a repeated adoption after a crash). A new
 * one is leased to the caller at once (token prefix .. n, like CLAIM) while room is left and its
 * destination holds fewer than half its concurrency limit in leases, so that items already
 * scheduled keep the other half; else it is scheduled due now. Returns {added, {{item, token}...
 * leased}, now}. The caller split these messages moments ago and holds their records: an item
 * leased here needs neither a CLAIM nor a READ. */
static const char lua_adopt[] = LUA_PRELUDE
    "local tokp, lease_ms = ARGV[1], tonumber(ARGV[2])\n"
    "local climit, room = tonumber(ARGV[3]), tonumber(ARGV[4])\n"
    "local n, out, conc, ci, zs, za, hs = 0, {}, {}, {}, {}, {}, {}\n"
    "for i = 5, #ARGV do\n"
    "  local x = ARGV[i]\n"
    "  if not redis.call('ZSCORE', KEYS[1], x) and not redis.call('ZSCORE', P .. 'leases', x)\n"
    "     and not redis.call('ZSCORE', P .. 'held', x)\n"
    "     and not redis.call('ZSCORE', P .. 'dead', x) then\n"
    "    n = n + 1\n"
    "    local d = dest_of(x)\n"
    "    local c = d and conc[d]\n"
    "    if d and not c then\n"
    "      c = tonumber(redis.call('HGET', P .. 'conc', d) or '0')\n"
    "      conc[d] = c\n"
    "    end\n"
    "    if d and #out < room and c * 2 < climit then\n"
    "      conc[d] = c + 1\n"
    "      ci[d] = (ci[d] or 0) + 1\n"
    "      local tok = tokp .. (#out + 1)\n"
    "      za[#za + 1] = now + lease_ms\n"
    "      za[#za + 1] = x\n"
    "      hs[#hs + 1] = x\n"
    "      hs[#hs + 1] = tok\n"
    "      out[#out + 1] = {x, tok}\n"
    "    else\n"
    "      zs[#zs + 1] = now\n"
    "      zs[#zs + 1] = x\n"
    "    end\n"
    "  end\n"
    "end\n"
    "bulk('ZADD', KEYS[1], zs, 2)\n"
    "bulk('ZADD', P .. 'leases', za, 2)\n"
    "bulk('HSET', P .. 'lease', hs, 2)\n"
    "for d, k in pairs(ci) do redis.call('HINCRBY', P .. 'conc', d, k) end\n"
    "return {n, out, tostring(now)}\n";

/* FINISH. ARGV: 1 item, 2 token, 3 mode: 'fin' (done: forget it), 'retry' (ARGV 4 delay ms,
 * 5 reason: due again later, one more try), 'release' (due now, nothing counted). Only the
 * leaseholder may: {'lost'} otherwise. Returns {'ok', when due again (0 for fin)}. */
static const char lua_finish[] =
    LUA_PRELUDE "local x = ARGV[1]\n"
                "if redis.call('HGET', P .. 'lease', x) ~= ARGV[2] then return {'lost', '0'} end\n"
                "unlease(x)\n"
                "local it = P .. 'it:' .. x\n"
                "if ARGV[3] == 'fin' then\n"
                "  redis.call('DEL', it)\n"
                "  return {'ok', '0'}\n"
                "end\n"
                "local at = now\n"
                "if ARGV[3] == 'retry' then\n"
                "  at = now + tonumber(ARGV[4])\n"
                "  redis.call('HINCRBY', it, 'tries', 1)\n"
                "  redis.call('HSET', it, 'err', ARGV[5])\n"
                "end\n"
                "requeue(x, at)\n"
                "return {'ok', tostring(at)}\n";

/* READ (message shard). ARGV: 1 qid, 2 largest first body chunk to return. Returns {record or
 * nil, record version, first body chunk or nil}: the chunk comes along when it is no larger than
 * ARGV 2, so that a small message needs no body read of its own. */
static const char lua_read[] =
    LUA_PRELUDE "local b = redis.call('LINDEX', P .. 'body:' .. ARGV[1], 0)\n"
                "if b and #b > tonumber(ARGV[2]) then b = false end\n"
                "return {redis.call('GET', P .. 'env:' .. ARGV[1]),\n"
                "        redis.call('HGET', P .. 'm:' .. ARGV[1], 'ver') or '0', b}\n";

/* UPDATE (message shard). ARGV: 1 qid, 2 record version read, 3 new record, 4 report item
 * ('' none), 5 '1' when every recipient is final, 6 '1' to attach the message's first octets to
 * the report item ("HDRS", u32 length, at most QUEUE_CONSUMER_REPORT_HEADERS_MAX octets, taken
 * from as many body chunks as that needs). Refuses with {'stale', current record, version} when
 * the record changed since it was read, {'gone'} when it no longer exists; else {'ok'} or
 * {'removed'}. */
static const char lua_update[] = LUA_PRELUDE
    "local q = ARGV[1]\n"
    "local env, m = P .. 'env:' .. q, P .. 'm:' .. q\n"
    "if redis.call('EXISTS', env) == 0 then return {'gone'} end\n"
    "local ver = redis.call('HGET', m, 'ver') or '0'\n"
    "if ver ~= ARGV[2] then return {'stale', redis.call('GET', env), ver} end\n"
    "if #ARGV[4] > 0 then\n"
    "  local item = ARGV[4]\n"
    "  if ARGV[6] == '1' then\n"
    "    local h, i, hmax = {}, 0, " QC_XSTR(
        QUEUE_CONSUMER_REPORT_HEADERS_MAX) "\n"
                                           "    local n = 0\n"
                                           "    while n < hmax do\n"
                                           "      local c = redis.call('LINDEX', P .. 'body:' .. "
                                           "q, i)\n"
                                           "      if not c then break end\n"
                                           "      h[#h + 1] = c\n"
                                           "      n = n + #c\n"
                                           "      i = i + 1\n"
                                           "    end\n"
                                           "    if n > 0 then\n"
                                           "      local s = string.sub(table.concat(h), 1, hmax)\n"
                                           "      item = item .. 'HDRS' .. struct.pack('>I4', #s) "
                                           ".. s\n"
                                           "    end\n"
                                           "  end\n"
                                           "  redis.call('RPUSH', P .. 'reports', item)\n"
                                           "  redis.call('HINCRBY', P .. 'stats', 'reports', 1)\n"
                                           "end\n"
                                           "if ARGV[5] == '1' then\n"
                                           "  redis.call('UNLINK', env, P .. 'body:' .. q, m)\n"
                                           "  redis.call('HINCRBY', P .. 'stats', 'completed', 1)\n"
                                           "  return {'removed'}\n"
                                           "end\n"
                                           "redis.call('SET', env, ARGV[3])\n"
                                           "redis.call('HINCRBY', m, 'ver', 1)\n"
                                           "return {'ok'}\n";

/* QUARANTINE (message shard). ARGV: 1 qid, 2 reason, 3 token of the lease on the unsplit
 * message ('' none). The record is renamed to qenv:<qid> and kept for the admin. */
static const char lua_quarantine[] =
    LUA_PRELUDE "local q = ARGV[1]\n"
                "if redis.call('EXISTS', P .. 'env:' .. q) == 1 then\n"
                "  redis.call('RENAME', P .. 'env:' .. q, P .. 'qenv:' .. q)\n"
                "end\n"
                "redis.call('ZADD', P .. 'quarantine', now, q)\n"
                "redis.call('HSET', P .. 'qreason', q, ARGV[2])\n"
                "redis.call('ZREM', KEYS[1], q)\n"
                "redis.call('HINCRBY', P .. 'stats', 'quarantined', 1)\n"
                "if #ARGV[3] > 0 and redis.call('HGET', P .. 'lease', q) == ARGV[3] then\n"
                "  unlease(q)\n"
                "  redis.call('DEL', P .. 'it:' .. q)\n"
                "end\n"
                "return 1\n";

/* RENEW. ARGV: 1 item, 2 token, 3 lease ms. Returns the new expiry, or nil when not ours. */
static const char lua_renew[] =
    LUA_PRELUDE "if redis.call('HGET', P .. 'lease', ARGV[1]) ~= ARGV[2] then return false end\n"
                "local at = now + tonumber(ARGV[3])\n"
                "redis.call('ZADD', P .. 'leases', 'XX', at, ARGV[1])\n"
                "return tostring(at)\n";

/* RTAKE (report items). ARGV: 1 lease ms. Expired taken items go back first; returns one item or
 * nil. */
static const char lua_rtake[] =
    LUA_PRELUDE "local busy = P .. 'rbusy'\n"
                "local exp = redis.call('ZRANGEBYSCORE', busy, '-inf', now, 'LIMIT', 0, 64)\n"
                "for _, r in ipairs(exp) do\n"
                "  redis.call('ZREM', busy, r)\n"
                "  redis.call('LPUSH', P .. 'reports', r)\n"
                "end\n"
                "local r = redis.call('LPOP', P .. 'reports')\n"
                "if not r then return false end\n"
                "redis.call('ZADD', busy, now + tonumber(ARGV[1]), r)\n"
                "return r\n";

/* SUMMARY. ARGV: 1 entries to look at per state. Returns {truncated, quarantined,
 * {{dest, scheduled, leased, held, dead, oldest qid, next attempt}...}}. */
static const char lua_summary[] =
    LUA_PRELUDE "local scan = tonumber(ARGV[1])\n"
                "local agg, order, trunc = {}, {}, 0\n"
                "local function walk(key, idx)\n"
                "  local v = redis.call('ZRANGE', key, 0, scan - 1, 'WITHSCORES')\n"
                "  if #v / 2 >= scan then trunc = 1 end\n"
                "  for i = 1, #v, 2 do\n"
                "    local x = v[i]\n"
                "    local d = dest_of(x) or ''\n"
                "    local q = x\n"
                "    if d ~= '' then q = string.sub(x, 1, #x - #d - 1) end\n"
                "    local a = agg[d]\n"
                "    if not a then\n"
                "      a = {0, 0, 0, 0, q, false}\n"
                "      agg[d] = a\n"
                "      order[#order + 1] = d\n"
                "    end\n"
                "    a[idx] = a[idx] + 1\n"
                "    if q < a[5] then a[5] = q end\n"
                "    if idx == 1 and not a[6] then a[6] = v[i + 1] end\n"
                "  end\n"
                "end\n"
                "walk(KEYS[1], 1)\n"
                "walk(P .. 'leases', 2)\n"
                "walk(P .. 'held', 3)\n"
                "walk(P .. 'dead', 4)\n"
                "local out = {}\n"
                "for _, d in ipairs(order) do\n"
                "  local a = agg[d]\n"
                "  out[#out + 1] = {d, a[1], a[2], a[3], a[4], a[5], a[6] or '0'}\n"
                "end\n"
                "return {trunc, redis.call('ZCARD', P .. 'quarantine'), out}\n";

/* LIST. ARGV: 1 state ('sched', 'leases', 'held', 'dead', 'quarantine'), 2 destination filter
 * ('*' any, '' unsplit messages), 3 limit, 4 entries to look at. Returns {truncated,
 * {{member, score, info}...}}. */
static const char lua_list[] =
    LUA_PRELUDE "local st, want = ARGV[1], ARGV[2]\n"
                "local limit, scan = tonumber(ARGV[3]), tonumber(ARGV[4])\n"
                "local key = KEYS[1]\n"
                "if st ~= 'sched' then key = P .. st end\n"
                "local v = redis.call('ZRANGE', key, 0, scan - 1, 'WITHSCORES')\n"
                "local out, trunc = {}, 0\n"
                "if #v / 2 >= scan then trunc = 1 end\n"
                "for i = 1, #v, 2 do\n"
                "  local x = v[i]\n"
                "  local d = dest_of(x) or ''\n"
                "  if want == '*' or want == d then\n"
                "    if #out >= limit then trunc = 1 break end\n"
                "    local info\n"
                "    if st == 'leases' then info = redis.call('HGET', P .. 'lease', x)\n"
                "    elseif st == 'quarantine' then info = redis.call('HGET', P .. 'qreason', x)\n"
                "    elseif st == 'dead' then info = redis.call('HGET', P .. 'it:' .. x, 'why')\n"
                "    else info = redis.call('HGET', P .. 'it:' .. x, 'err') end\n"
                "    out[#out + 1] = {x, v[i + 1], info or ''}\n"
                "  end\n"
                "end\n"
                "return {trunc, out}\n";

/* INFO (message shard). ARGV: 1 qid. Returns {record or nil, quarantined record or nil, version,
 * quarantine reason or nil, quarantine time or nil}. */
static const char lua_info[] = LUA_PRELUDE
    "local q = ARGV[1]\n"
    "return {redis.call('GET', P .. 'env:' .. q), redis.call('GET', P .. 'qenv:' .. q),\n"
    "        redis.call('HGET', P .. 'm:' .. q, 'ver') or '0',\n"
    "        redis.call('HGET', P .. 'qreason', q),\n"
    "        redis.call('ZSCORE', P .. 'quarantine', q)}\n";

/* IADMIN. ARGV: 1 mode ('show', 'delete', 'hold', 'release', 'retry'), 2.. items. Applies the
 * mode to each and returns, for each present in some state, {item, sched score, lease expiry,
 * lease token, held score, dead score, tries, crashes, last error, dead reason, changed}. */
static const char lua_iadmin[] = LUA_PRELUDE
    "local mode = ARGV[1]\n"
    "local res = {}\n"
    "for i = 2, #ARGV do\n"
    "  local x = ARGV[i]\n"
    "  local it = P .. 'it:' .. x\n"
    "  local s = redis.call('ZSCORE', KEYS[1], x)\n"
    "  local l = redis.call('ZSCORE', P .. 'leases', x)\n"
    "  local h = redis.call('ZSCORE', P .. 'held', x)\n"
    "  local dd = redis.call('ZSCORE', P .. 'dead', x)\n"
    "  local tok = redis.call('HGET', P .. 'lease', x)\n"
    "  local f = redis.call('HMGET', it, 'tries', 'crashes', 'err', 'why')\n"
    "  local ch = 0\n"
    "  if s or l or h or dd then\n"
    "    if mode == 'delete' then\n"
    "      redis.call('ZREM', KEYS[1], x)\n"
    "      redis.call('ZREM', P .. 'held', x)\n"
    "      redis.call('ZREM', P .. 'dead', x)\n"
    "      if l then unlease(x) end\n"
    "      redis.call('DEL', it)\n"
    "      ch = 1\n"
    "    elseif mode == 'hold' then\n"
    "      redis.call('HSET', it, 'held', '1')\n"
    "      if s then\n"
    "        redis.call('ZREM', KEYS[1], x)\n"
    "        redis.call('ZADD', P .. 'held', now, x)\n"
    "      end\n"
    "      ch = 1\n"
    "    elseif mode == 'release' then\n"
    "      redis.call('HDEL', it, 'held')\n"
    "      if h then\n"
    "        redis.call('ZREM', P .. 'held', x)\n"
    "        redis.call('ZADD', KEYS[1], now, x)\n"
    "        ch = 1\n"
    "      end\n"
    "    elseif mode == 'retry' then\n"
    "      if s then\n"
    "        redis.call('ZADD', KEYS[1], now, x)\n"
    "        ch = 1\n"
    "      elseif dd then\n"
    "        redis.call('ZREM', P .. 'dead', x)\n"
    "        redis.call('HDEL', it, 'crashes', 'why')\n"
    "        requeue(x, now)\n"
    "        ch = 1\n"
    "      end\n"
    "    end\n"
    "    res[#res + 1] = {x, s or false, l or false, tok or false, h or false, dd or false,\n"
    "                     f[1] or '0', f[2] or '0', f[3] or false, f[4] or false, ch}\n"
    "  end\n"
    "end\n"
    "return res\n";

/* DELMSG (message shard). ARGV: 1 qid. Removes the record, quarantined record, body and
 * state. Returns how many keys or entries went. */
static const char lua_delmsg[] = LUA_PRELUDE
    "local q = ARGV[1]\n"
    "local n = redis.call('DEL', P .. 'env:' .. q, P .. 'qenv:' .. q, P .. 'body:' .. q,\n"
    "                     P .. 'm:' .. q)\n"
    "n = n + redis.call('ZREM', P .. 'quarantine', q)\n"
    "redis.call('HDEL', P .. 'qreason', q)\n"
    "return n\n";

/* BULK. ARGV: 1 mode ('flush': scheduled items due later become due now; 'revive': dead items
 * due now, crash count reset), 2 limit. Returns how many it moved (repeat while = limit). */
static const char lua_bulk[] = LUA_PRELUDE
    "local lim = tonumber(ARGV[2])\n"
    "local n = 0\n"
    "if ARGV[1] == 'flush' then\n"
    "  local v = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. tostring(now), '+inf', 'LIMIT', 0,\n"
    "                       lim)\n"
    "  for _, x in ipairs(v) do redis.call('ZADD', KEYS[1], now, x) n = n + 1 end\n"
    "else\n"
    "  local v = redis.call('ZRANGE', P .. 'dead', 0, lim - 1)\n"
    "  for _, x in ipairs(v) do\n"
    "    redis.call('ZREM', P .. 'dead', x)\n"
    "    redis.call('HDEL', P .. 'it:' .. x, 'crashes', 'why')\n"
    "    requeue(x, now)\n"
    "    n = n + 1\n"
    "  end\n"
    "end\n"
    "return n\n";

/* FINISHN. ARGV: 5-tuples (item, token, mode, delay ms, reason), modes as FINISH's: FINISH for
 * several leased entries of one shard in one call: the new messages a claim split, and the items
 * of the completions of one loop iteration (12.5). The tokens are read in one HMGET; the lease
 * entries and the state of the finished ones are removed in one ZREM, one HDEL and one DEL (in
 * steps of 512) and the concurrency counters moved once per destination. Returns one entry per
 * tuple: 'lost' (not ours: untouched) or when it is due again ('0' for fin), as FINISH. */
static const char lua_finishn[] = LUA_PRELUDE
    "local xs, toks, res = {}, {}, {}\n"
    "for i = 1, #ARGV - 4, 5 do xs[#xs + 1] = ARGV[i] end\n"
    "for i = 1, #xs, 512 do\n"
    "  local r = redis.call('HMGET', P .. 'lease', unpack(xs, i, math.min(i + 511, #xs)))\n"
    "  for k = 1, #r do toks[#toks + 1] = r[k] end\n"
    "end\n"
    "local zr, dl, cd = {}, {}, {}\n"
    "for k = 1, #xs do\n"
    "  local x, i = xs[k], 5 * k - 4\n"
    "  if toks[k] ~= ARGV[i + 1] then\n"
    "    res[k] = 'lost'\n"
    "  else\n"
    "    zr[#zr + 1] = x\n"
    "    local d = dest_of(x)\n"
    "    if d then cd[d] = (cd[d] or 0) + 1 end\n"
    "    local mode, at = ARGV[i + 2], now\n"
    "    if mode == 'fin' then\n"
    "      dl[#dl + 1] = P .. 'it:' .. x\n"
    "      at = 0\n"
    "    else\n"
    "      if mode == 'retry' then\n"
    "        local it = P .. 'it:' .. x\n"
    "        at = now + tonumber(ARGV[i + 3])\n"
    "        redis.call('HINCRBY', it, 'tries', 1)\n"
    "        redis.call('HSET', it, 'err', ARGV[i + 4])\n"
    "      end\n"
    "      requeue(x, at)\n"
    "    end\n"
    "    res[k] = tostring(at)\n"
    "  end\n"
    "end\n"
    "bulk('ZREM', P .. 'leases', zr, 1)\n"
    "bulk('HDEL', P .. 'lease', zr, 1)\n"
    "for i = 1, #dl, 512 do redis.call('DEL', unpack(dl, i, math.min(i + 511, #dl))) end\n"
    "for d, k in pairs(cd) do\n"
    "  if redis.call('HINCRBY', P .. 'conc', d, -k) <= 0 then redis.call('HDEL', P .. 'conc', d) "
    "end\n"
    "end\n"
    "return res\n";

enum qc_script {
    QS_CLAIM,
    QS_ADOPT,
    QS_FINISH,
    QS_READ,
    QS_UPDATE,
    QS_QUARANTINE,
    QS_RENEW,
    QS_RTAKE,
    QS_SUMMARY,
    QS_LIST,
    QS_INFO,
    QS_IADMIN,
    QS_DELMSG,
    QS_BULK,
    QS_FINISHN,
    QS_COUNT,
};

static const char *const qc_lua[QS_COUNT] = {
    lua_claim,      lua_adopt,  lua_finish, lua_read,    lua_update,
    lua_quarantine, lua_renew,  lua_rtake,  lua_summary, lua_list,
    lua_info,       lua_iadmin, lua_delmsg, lua_bulk,    lua_finishn,
};

const char *queue_consumer_script(unsigned i)
{
    return i < QS_COUNT ? qc_lua[i] : NULL;
}

/* QC_BULK_LIMIT is how many entries one BULK script moves; QC_BULK_ROUNDS bounds the repeats per
 * shard (so one flush touches at most QC_BULK_LIMIT * QC_BULK_ROUNDS entries of a shard). */
#define QC_BULK_LIMIT 1000u
#define QC_BULK_ROUNDS 1000u
/* QC_TOKEN_MAX bounds a lease token: node, '#', 16 hex digits, '#', a counter. */
#define QC_TOKEN_MAX (QUEUE_NODE_MAX + 32)

/* ---- types ---- */

struct queue_consumer;

/* qc_fn handles one reply: |r| NULL when the connection was lost or reset before it came. */
typedef void (*qc_fn)(struct queue_consumer *c, void *ctx, uintptr_t tag, const redisReply *r);

/* qc_cmd is one command sent and not yet answered, linked in send order (= reply order). A
 * script call keeps its arguments so that it can be sent again as EVAL after NOSCRIPT. */
struct qc_cmd {
    struct qc_cmd *prev, *next;
    struct queue_consumer *c;
    qc_fn fn;
    void *ctx;
    uintptr_t tag;
    uint64_t deadline_ms;
    int script; /* QS_* or -1 */
    bool used_eval;
    int argc;
    const char **argv;
    size_t *lens;
};

/* qc_job is an operation in flight; every one is on c->jobs so that queue_consumer_free can free
 * it (|destroy|, no callbacks). */
struct qc_job {
    struct qc_job *prev, *next;
    void (*destroy)(struct qc_job *j);
};

/* QC_PRE_MAX bounds the octets a cache of its own keeps of the new messages its consumer split
 * (qc_pre; a shared cache has its own bound); QC_PRE_AGE_MS how long one is kept;
 * QC_PRE_BUCKETS sizes their index (a 64 MiB cache holds about 25000 1 KiB messages). */
#define QC_PRE_MAX (4096u * 1024u)
#define QC_PRE_AGE_MS 2000u
#define QC_PRE_BUCKETS 4096u

/* QC_FIN_BATCH_MAX bounds the completions one FINISHN finishes. */
#define QC_FIN_BATCH_MAX 256u

/* qc_pre is what the CLAIM that split a new message read of it in the same script (record,
 * version, first body chunk when small): the message's items, leased by a later claim round
 * or claim call of a consumer of the same cache within QC_PRE_AGE_MS, start from it instead of
 * a READ. Safe
 * because a completion checks the version: a record changed since (another destination's
 * completion, an admin action) is re-read then, and a message gone is reported gone. */
struct qc_pre {
    struct qc_pre *prev, *next; /* the cache's list, oldest first */
    struct qc_pre *hnext;       /* its index bucket */
    char qid[CMTP_QID_MAX + 1];
    char ver[24];
    size_t ver_len;
    uint8_t *rec, *body; /* one allocation: record then first chunk */
    size_t rec_len, body_len;
    bool has_body;
    unsigned uses_left; /* destinations of the message not yet leased from it */
    uint64_t at_ms;
};

/* QC_RESCAN_MS is how long a CLAIM may start behind the blocked run its shard's last CLAIM saw:
 * at least this often a shard's head is looked at in full again. */
#define QC_RESCAN_MS 1000u

/* qc_anchor is the last entry of a shard's blocked run (the head of its due entries that are
 * items of one destination at its limit) and its score, as CLAIM returned them; the next CLAIM
 * of the shard starts behind it (lua_claim). */
struct qc_anchor {
    char item[QUEUE_CONSUMER_ITEM_MAX];
    char score[32];
    uint64_t rescan_ms; /* when a CLAIM of the shard last went without an anchor */
};

/* queue_consumer_cache holds the qc_pre entries, oldest first, with an index by qid. One
 * shared by the consumers of a process (the workers of one node) lets a worker claim an item of
 * a message another worker split without reading its record again; the lock is held for a
 * lookup or an insert and the copy of one entry, never across a callback. */
struct queue_consumer_cache {
    pthread_mutex_t mu;
    size_t max; /* octets of records and first chunks kept at most */
    struct qc_pre *head, *tail;
    struct qc_pre *index[QC_PRE_BUCKETS];
    size_t bytes;
};

struct queue_consumer {
    struct queue_loop loop;
    struct queue_conn rc; /* the Redis connection (queue/redis_conn.c) */
    /* configuration */
    char prefix[QUEUE_PREFIX_MAX + 1];
    char node[QUEUE_NODE_MAX + 1];
    unsigned shards;
    unsigned inflight_max;
    uint32_t op_timeout_ms;
    uint32_t lease_ms;
    unsigned conc;
    uint64_t retry_base_ms, retry_max_ms, lifetime_ms;
    unsigned crash_max;
    unsigned batch;
    void (*event_cb)(void *arg, const struct queue_consumer_event *ev);
    void *event_arg;
    /* connection */
    char sha[QS_COUNT][41]; /* of the scripts, loaded at each connect */
    unsigned shas_missing;
    struct qc_cmd *cmds_head, *cmds_tail;
    unsigned inflight;
    /* work */
    struct qc_job *jobs;
    unsigned claim_cursor;
    uint8_t *busy_hint; /* per shard: its last CLAIM left due entries or expired leases */
    uint8_t *more_hint; /* per shard: its last CLAIM had more claimable items than its share */
    struct qc_anchor *anchor; /* per shard: the end of the blocked run its last CLAIM saw */
    bool swept;               /* a claim asked every shard at |sweep_ms| */
    uint64_t sweep_ms;
    unsigned report_cursor;
    uint64_t rng;
    struct queue_consumer_stats st;
    struct queue_consumer_cache *cache; /* records of the messages split (qc_pre) */
    bool own_cache;                     /* created with the consumer (no shared one given) */
    /* completions waiting for their item's FINISH, sent at the end of the loop iteration */
    struct qc_done *fin_head, *fin_tail;
    size_t fin_n;
    void *fin_timer;
};

struct queue_consumer_lease {
    struct queue_consumer *c;
    struct queue_consumer_lease *link; /* a claim's list while being validated */
    char item[QUEUE_CONSUMER_ITEM_MAX];
    char qid[CMTP_QID_MAX + 1];
    char dest[CMTP_DOMAIN_MAX + 1];
    char token[QC_TOKEN_MAX];
    unsigned shard_msg;  /* shard of the record */
    unsigned shard_item; /* home shard of the destination */
    uint32_t tries, crashes;
    int64_t expires_ms;
    char ver[24]; /* record version read with it */
    struct queue_record *rec;
    size_t *rcpts;
    size_t n_rcpts;
    uint8_t *pre; /* the first body chunk, read with the record (NULL: not read) */
    size_t pre_len;
    bool busy;      /* a renewal is in flight */
    bool abandoned; /* freed by the caller during a renewal: the renewal frees it */
};

/* ---- small helpers ---- */

static int64_t wall_ms(void)
{
    return queue_conn_wall_ms();
}

static uint64_t loop_now(const struct queue_consumer *c)
{
    return c->loop.ops->now_ms(c->loop.loop);
}

static void set_error(struct queue_consumer *c, const char *what, const char *detail)
{
    queue_conn_set_error(&c->rc, what, detail);
}

static uint64_t rng_next(struct queue_consumer *c)
{
    return queue_conn_splitmix64(&c->rng);
}

/* copy_clean copies at most |cap| - 1 octets of |s| (|n| octets) into |out|, replacing control
 * characters: reasons come from peers and end up in logs and reports. */
static void copy_clean(char *out, size_t cap, const char *s, size_t n)
{
    if (cap == 0)
        return;
    if (s == NULL)
        n = 0;
    if (n > cap - 1)
        n = cap - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        out[i] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
    }
    out[n] = '\0';
}

static bool r_str(const redisReply *r)
{
    return r != NULL && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS);
}

static bool r_is(const redisReply *r, const char *s)
{
    return r_str(r) && r->len == strlen(s) && memcmp(r->str, s, r->len) == 0;
}

/* r_ll reads an integer reply or a decimal string reply (scores come back as strings). */
static bool r_ll(const redisReply *r, long long *out)
{
    char buf[40];
    char *end;

    if (r == NULL)
        return false;
    if (r->type == REDIS_REPLY_INTEGER) {
        *out = r->integer;
        return true;
    }
    if (!r_str(r) || r->len == 0 || r->len >= sizeof(buf))
        return false;
    memcpy(buf, r->str, r->len);
    buf[r->len] = '\0';
    errno = 0;
    double d = strtod(buf, &end);
    if (errno || *end != '\0' || d != d || d > 9.2e18 || d < -9.2e18)
        return false;
    *out = (long long)d;
    return true;
}

static uint32_t r_u32(const redisReply *r)
{
    long long v = 0;
    if (!r_ll(r, &v) || v < 0)
        return 0;
    return v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

static void r_text(const redisReply *r, char *out, size_t cap)
{
    if (r_str(r) || (r != NULL && r->type == REDIS_REPLY_ERROR))
        copy_clean(out, cap, r->str, r->len);
    else if (cap)
        out[0] = '\0';
}

static void emit(struct queue_consumer *c, enum queue_consumer_event_kind kind, const char *qid,
                 const char *dest, const char *detail, unsigned count)
{
    struct queue_consumer_event ev = {
        .kind = kind,
        .qid = qid ? qid : "",
        .dest = dest ? dest : "",
        .detail = detail ? detail : "",
        .count = count,
    };
    if (c->event_cb)
        c->event_cb(c->event_arg, &ev);
}

static void job_add(struct queue_consumer *c, struct qc_job *j, void (*destroy)(struct qc_job *))
{
    j->destroy = destroy;
    j->prev = NULL;
    j->next = c->jobs;
    if (c->jobs)
        c->jobs->prev = j;
    c->jobs = j;
}

static void job_del(struct queue_consumer *c, struct qc_job *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        c->jobs = j->next;
    if (j->next)
        j->next->prev = j->prev;
    j->prev = j->next = NULL;
}

unsigned queue_consumer_item_shard(const char *dest, unsigned shards)
{
    return queue_txid_shard(dest, strlen(dest), shards);
}

static const char *rcpt_dest(const struct queue_rcpt *r)
{
    return r->next_hop[0] ? r->next_hop : r->addr.domain;
}

/* qid_time_ms decodes the accept time in the first 10 Crockford base32 digits of a qid. */
static int64_t qid_time_ms(const char *qid)
{
    static const char b32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    int64_t v = 0;
    for (int i = 0; i < 10; i++) {
        const char *p = qid[i] ? strchr(b32, qid[i]) : NULL;
        if (p == NULL)
            return 0;
        v = v * 32 + (p - b32);
    }
    return v;
}

/* split_item parses `<qid>/<dest>` (|len| octets) or a bare qid into |qid| and |dest| ("" for a
 * bare qid); checks the bounds and the qid's shard. */
static bool split_item(const struct queue_consumer *c, const char *s, size_t len, char *qid,
                       char *dest, unsigned *shard_msg)
{
    const char *slash = memchr(s, '/', len);
    size_t ql = slash ? (size_t)(slash - s) : len;
    size_t dl = slash ? len - ql - 1 : 0;

    if (ql == 0 || ql > CMTP_QID_MAX || dl > CMTP_DOMAIN_MAX || (slash && dl == 0))
        return false;
    memcpy(qid, s, ql);
    qid[ql] = '\0';
    if (dl)
        memcpy(dest, slash + 1, dl);
    dest[dl] = '\0';
    if (strlen(qid) != ql || strlen(dest) != dl)
        return false;
    if (queue_qid_shard(qid, shard_msg) < 0 || *shard_msg >= c->shards)
        return false;
    return true;
}

/* ---- commands and deadlines ---- */

static void on_reply(redisAsyncContext *ac, void *r, void *priv);

static void cmd_link(struct queue_consumer *c, struct qc_cmd *cmd)
{
    cmd->prev = c->cmds_tail;
    cmd->next = NULL;
    if (c->cmds_tail)
        c->cmds_tail->next = cmd;
    else
        c->cmds_head = cmd;
    c->cmds_tail = cmd;
    c->inflight++;
}

static void cmd_unlink(struct queue_consumer *c, struct qc_cmd *cmd)
{
    if (cmd->prev)
        cmd->prev->next = cmd->next;
    else
        c->cmds_head = cmd->next;
    if (cmd->next)
        cmd->next->prev = cmd->prev;
    else
        c->cmds_tail = cmd->prev;
    cmd->prev = cmd->next = NULL;
    c->inflight--;
}

/* cmd_send hands |cmd| (argv already in it) to hiredis. On failure |cmd| stays the
 * caller's. */
static int cmd_send(struct queue_consumer *c, struct qc_cmd *cmd)
{
    if (c->rc.ac == NULL)
        return -ENOTCONN;
    cmd->deadline_ms = loop_now(c) + c->op_timeout_ms;
    if (redisAsyncCommandArgv(c->rc.ac, on_reply, cmd, cmd->argc, cmd->argv, cmd->lens) != REDIS_OK)
        return -EIO;
    cmd_link(c, cmd);
    c->st.cmds_sent++;
    queue_conn_arm_deadline(&c->rc, cmd->deadline_ms);
    return 0;
}

/* qc_cmd_argv sends a plain command (|argc| arguments; copied by hiredis). */
static int qc_cmd_argv(struct queue_consumer *c, int argc, const char **argv, const size_t *lens,
                       qc_fn fn, void *ctx, uintptr_t tag)
{
    struct qc_cmd *cmd = calloc(1, sizeof(*cmd));

    if (cmd == NULL)
        return -ENOMEM;
    cmd->c = c;
    cmd->fn = fn;
    cmd->ctx = ctx;
    cmd->tag = tag;
    cmd->script = -1;
    cmd->argc = argc;
    cmd->argv = argv;
    cmd->lens = (size_t *)lens;
    int rc = cmd_send(c, cmd);
    if (rc < 0) {
        free(cmd);
        return rc;
    }
    /* hiredis formatted the command: the caller's argv is not needed again. */
    cmd->argv = NULL;
    cmd->lens = NULL;
    return 0;
}

/* qc_eval sends script |script| on |shard| with |nargs| arguments |args| (|lens| octets each),
 * copied into the command so that NOSCRIPT can be answered by sending it again as EVAL. */
static int qc_eval(struct queue_consumer *c, int script, unsigned shard, size_t nargs,
                   const char *const *args, const size_t *lens, qc_fn fn, void *ctx, uintptr_t tag)
{
    char key[QUEUE_KEY_MAX];
    int kl;
    size_t argc = 4 + nargs, total = 0;
    struct qc_cmd *cmd;
    char *p;

    if (c->rc.state != QUEUE_CONNECTED)
        return -ENOTCONN;
    kl = queue_key_format(key, sizeof(key), c->prefix, shard, "sched", NULL, 0);
    if (kl < 0)
        return kl;
    for (size_t i = 0; i < nargs; i++)
        total += lens[i];
    total += (size_t)kl;
    if (argc > (size_t)INT32_MAX)
        return -E2BIG;
    cmd = malloc(sizeof(*cmd) + argc * (sizeof(char *) + sizeof(size_t)) + total);
    if (cmd == NULL)
        return -ENOMEM;
    memset(cmd, 0, sizeof(*cmd));
    cmd->c = c;
    cmd->fn = fn;
    cmd->ctx = ctx;
    cmd->tag = tag;
    cmd->script = script;
    cmd->argc = (int)argc;
    cmd->argv = (const char **)(cmd + 1);
    cmd->lens = (size_t *)(cmd->argv + argc);
    p = (char *)(cmd->lens + argc);
    cmd->argv[0] = "EVALSHA";
    cmd->lens[0] = 7;
    cmd->argv[1] = c->sha[script];
    cmd->lens[1] = 40;
    cmd->argv[2] = "1";
    cmd->lens[2] = 1;
    memcpy(p, key, (size_t)kl);
    cmd->argv[3] = p;
    cmd->lens[3] = (size_t)kl;
    p += kl;
    for (size_t i = 0; i < nargs; i++) {
        if (lens[i])
            memcpy(p, args[i], lens[i]);
        cmd->argv[4 + i] = p;
        cmd->lens[4 + i] = lens[i];
        p += lens[i];
    }
    int rc = cmd_send(c, cmd);
    if (rc < 0)
        free(cmd);
    return rc;
}

/* qc_evals is qc_eval with NUL-terminated arguments. */
static int qc_evals(struct queue_consumer *c, int script, unsigned shard, size_t nargs,
                    const char *const *args, qc_fn fn, void *ctx, uintptr_t tag)
{
    size_t lens[16];
    if (nargs > 16)
        return -E2BIG;
    for (size_t i = 0; i < nargs; i++)
        lens[i] = strlen(args[i]);
    return qc_eval(c, script, shard, nargs, args, lens, fn, ctx, tag);
}

/* ---- connection lifecycle ---- */

static void on_auth(struct queue_consumer *c, void *ctx, uintptr_t tag, const redisReply *r)
{
    char text[QUEUE_REASON_MAX];
    (void)ctx;
    (void)tag;
    if (r != NULL && r->type == REDIS_REPLY_ERROR) {
        r_text(r, text, sizeof(text));
        queue_conn_reset_soon(&c->rc, "redis AUTH refused", text);
    }
}

static void on_script_loaded(struct queue_consumer *c, void *ctx, uintptr_t tag,
                             const redisReply *r)
{
    char text[QUEUE_REASON_MAX];
    (void)ctx;
    if (r == NULL || c->rc.state != QUEUE_CONNECTING)
        return;
    if (r->type == REDIS_REPLY_STRING && r->len == 40 && tag < QS_COUNT) {
        memcpy(c->sha[tag], r->str, 40);
        c->sha[tag][40] = '\0';
        if (--c->shas_missing == 0)
            queue_conn_ready(&c->rc);
        return;
    }
    r_text(r, text, sizeof(text));
    queue_conn_reset_soon(&c->rc, "redis SCRIPT LOAD failed",
                          r->type == REDIS_REPLY_ERROR ? text : "reply");
}

/* qc_down (queue_conn_ops): the connection is gone; the scripts are loaded again at the next
 * connect. */
static void qc_down(void *owner)
{
    (void)owner;
}

/* qc_deadline (queue_conn_ops): the earliest deadline of an outstanding command. */
static uint64_t qc_deadline(void *owner)
{
    const struct queue_consumer *c = owner;
    uint64_t min = UINT64_MAX;
    for (const struct qc_cmd *cmd = c->cmds_head; cmd; cmd = cmd->next)
        if (cmd->deadline_ms < min)
            min = cmd->deadline_ms;
    return min;
}

/* qc_up (queue_conn_ops): connected; AUTH when configured, then SCRIPT LOAD of every script
 * (the last reply makes the consumer ready). */
static void qc_up(void *owner)
{
    struct queue_consumer *c = owner;
    const char *argv[3];
    size_t lens[3];
    int argc = queue_conn_auth_argv(&c->rc, argv, lens);

    if (argc > 0 && qc_cmd_argv(c, argc, argv, lens, on_auth, NULL, 0) < 0)
        goto err;
    c->shas_missing = QS_COUNT;
    for (unsigned i = 0; i < QS_COUNT; i++) {
        argv[0] = "SCRIPT";
        lens[0] = 6;
        argv[1] = "LOAD";
        lens[1] = 4;
        argv[2] = qc_lua[i];
        lens[2] = strlen(qc_lua[i]);
        if (qc_cmd_argv(c, 3, argv, lens, on_script_loaded, NULL, i) < 0)
            goto err;
    }
    return;
err:
    queue_conn_reset_soon(&c->rc, "redis handshake failed", "out of memory");
}

static const struct queue_conn_ops qc_conn_ops = {
    .up = qc_up, .down = qc_down, .deadline = qc_deadline};

static void on_reply(redisAsyncContext *ac, void *r, void *priv)
{
    struct qc_cmd *cmd = priv;
    struct queue_consumer *c = cmd->c;
    redisReply *reply = r;

    cmd_unlink(c, cmd);
    if (c->rc.freeing) {
        free(cmd);
        return;
    }
    if (reply == NULL) {
        c->st.dropped++;
        if (ac->err)
            set_error(c, "redis connection lost", ac->errstr);
        if (c->rc.ac == ac)
            c->rc.state = QUEUE_DOWN;
    } else {
        c->st.replies++;
        if (reply->type == REDIS_REPLY_ERROR) {
            c->st.errors++;
            if (cmd->script >= 0 && !cmd->used_eval && reply->len >= 8 &&
                memcmp(reply->str, "NOSCRIPT", 8) == 0 && c->rc.state == QUEUE_CONNECTED &&
                c->rc.ac == ac) {
                /* Script cache flushed (restart, failover): send the source; EVAL caches it. */
                cmd->used_eval = true;
                cmd->argv[0] = "EVAL";
                cmd->lens[0] = 4;
                cmd->argv[1] = qc_lua[cmd->script];
                cmd->lens[1] = strlen(qc_lua[cmd->script]);
                if (cmd_send(c, cmd) == 0)
                    return;
                reply = NULL; /* could not resend: report a lost reply */
                c->st.dropped++;
            }
        }
    }
    if (cmd->fn)
        cmd->fn(c, cmd->ctx, cmd->tag, reply);
    free(cmd);
}

/* ---- leases ---- */

static void lease_free(struct queue_consumer_lease *l)
{
    if (l == NULL)
        return;
    if (l->rec != NULL) {
        queue_record_cleanup(l->rec);
        free(l->rec);
    }
    if (l->pre != NULL) {
        explicit_bzero(l->pre, l->pre_len);
        free(l->pre);
    }
    free(l->rcpts);
    free(l);
}

const char *queue_consumer_lease_qid(const struct queue_consumer_lease *l)
{
    return l->qid;
}

const char *queue_consumer_lease_dest(const struct queue_consumer_lease *l)
{
    return l->dest;
}

const struct queue_record *queue_consumer_lease_record(const struct queue_consumer_lease *l)
{
    return l->rec;
}

const size_t *queue_consumer_lease_rcpts(const struct queue_consumer_lease *l, size_t *n)
{
    *n = l->n_rcpts;
    return l->rcpts;
}

uint32_t queue_consumer_lease_tries(const struct queue_consumer_lease *l)
{
    return l->tries;
}

uint32_t queue_consumer_lease_crashes(const struct queue_consumer_lease *l)
{
    return l->crashes;
}

int64_t queue_consumer_lease_expires_ms(const struct queue_consumer_lease *l)
{
    return l->expires_ms;
}

/* lease_select collects the pending recipients of |l|'s destination. */
static int lease_select(struct queue_consumer_lease *l)
{
    const struct queue_record *rec = l->rec;
    size_t n = 0;

    free(l->rcpts);
    l->rcpts = NULL;
    l->n_rcpts = 0;
    for (size_t i = 0; i < rec->n_rcpts; i++)
        if (rec->rcpts[i].status == QUEUE_RCPT_PENDING &&
            strcmp(rcpt_dest(&rec->rcpts[i]), l->dest) == 0)
            n++;
    if (n == 0)
        return 0;
    l->rcpts = malloc(n * sizeof(*l->rcpts));
    if (l->rcpts == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < rec->n_rcpts; i++)
        if (rec->rcpts[i].status == QUEUE_RCPT_PENDING &&
            strcmp(rcpt_dest(&rec->rcpts[i]), l->dest) == 0)
            l->rcpts[l->n_rcpts++] = i;
    return 0;
}

/* decode_check decodes the record of |qid| and checks that it is that message's. On failure
 * |why| receives the quarantine reason (the decoder's keyword, or "qid-mismatch"). */
static enum queue_record_err decode_check(const char *qid, const char *buf, size_t len,
                                          struct queue_record **out, char *why, size_t cap)
{
    struct queue_record *rec = malloc(sizeof(*rec));
    enum queue_record_err e;

    *out = NULL;
    if (rec == NULL) {
        snprintf(why, cap, "%s", queue_record_strerror(QUEUE_RECORD_ERR_NOMEM));
        return QUEUE_RECORD_ERR_NOMEM;
    }
    e = queue_record_decode(rec, (const uint8_t *)buf, len);
    if (e != QUEUE_RECORD_OK) {
        free(rec);
        snprintf(why, cap, "%s", queue_record_strerror(e));
        return e;
    }
    if (strcmp(rec->qid, qid) != 0) {
        queue_record_cleanup(rec);
        free(rec);
        snprintf(why, cap, "qid-mismatch");
        return QUEUE_RECORD_ERR_CORRUPT;
    }
    *out = rec;
    return QUEUE_RECORD_OK;
}

/* dest_list returns the distinct destinations of |rec| (pointers into it), sorted; only those
 * with a pending recipient when |pending_only|. |*n| receives their number. NULL with *n = 0 is
 * "none"; NULL with *n = SIZE_MAX is out of memory. */
static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static const char **dest_list(const struct queue_record *rec, bool pending_only, size_t *n)
{
    const char **v = malloc((rec->n_rcpts ? rec->n_rcpts : 1) * sizeof(*v));
    size_t k = 0, u = 0;

    *n = SIZE_MAX;
    if (v == NULL)
        return NULL;
    for (size_t i = 0; i < rec->n_rcpts; i++)
        if (!pending_only || rec->rcpts[i].status == QUEUE_RCPT_PENDING)
            v[k++] = rcpt_dest(&rec->rcpts[i]);
    qsort(v, k, sizeof(*v), cmp_str);
    for (size_t i = 0; i < k; i++)
        if (u == 0 || strcmp(v[i], v[u - 1]) != 0)
            v[u++] = v[i];
    *n = u;
    if (u == 0) {
        free(v);
        return NULL;
    }
    return v;
}

/* qc_items_eval sends |script| with ARGV = [|first|] + `<qid>/<dest>` for each of |dests| whose
 * home shard is |shard|. Returns 1 when sent, 0 when no destination homes there, or -errno. */
static int qc_items_eval(struct queue_consumer *c, int script, unsigned shard, const char *first,
                         const char *qid, const char *const *dests, size_t n, qc_fn fn, void *ctx,
                         uintptr_t tag)
{
    size_t k = 0, cnt = 0, ql = strlen(qid);
    const char **args;
    size_t *lens;
    char *buf;
    int rc;

    for (size_t i = 0; i < n; i++)
        if (queue_consumer_item_shard(dests[i], c->shards) == shard)
            cnt++;
    if (cnt == 0)
        return 0;
    args = calloc(cnt + 1, sizeof(*args));
    lens = calloc(cnt + 1, sizeof(*lens));
    buf = malloc(cnt * QUEUE_CONSUMER_ITEM_MAX);
    if (args == NULL || lens == NULL || buf == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    if (first != NULL) {
        args[k] = first;
        lens[k++] = strlen(first);
    }
    char *p = buf;
    for (size_t i = 0; i < n; i++) {
        if (queue_consumer_item_shard(dests[i], c->shards) != shard)
            continue;
        size_t dl = strlen(dests[i]);
        memcpy(p, qid, ql);
        p[ql] = '/';
        memcpy(p + ql + 1, dests[i], dl);
        args[k] = p;
        lens[k++] = ql + 1 + dl;
        p += QUEUE_CONSUMER_ITEM_MAX;
    }
    rc = qc_eval(c, script, shard, k, args, lens, fn, ctx, tag);
    if (rc == 0)
        rc = 1;
out:
    free(args);
    free(lens);
    free(buf);
    return rc;
}

/* ---- claim ----
 *
 * A claim runs in rounds (at most QC_CLAIM_ROUNDS). A round sends the CLAIM script to each of its
 * shards at once, pipelined: one round trip however many shards it asks. The work items the
 * caller may still take (|max| less those taken) are split between the shards of the round, so
 * that a claim never leases more than |max| items; new messages (bare qids) are leased besides,
 * up to QC_BARE_ROUND_MAX per round, since they are only split, never handed out. The records of
 * the items are read as soon as their CLAIM reply is in (READ, pipelined, with the first body
 * chunk). Once every CLAIM reply of the round is in, the new messages are split with one ADOPT per
 * home shard for all of them, then finished with one FINISHN per message shard. The next round
 * asks the shards that had more claimable items than their share and the home shards that
 * received new items. The first round asks every shard when QC_SWEEP_MS passed since the last
 * sweep, else only the shards whose last CLAIM left due entries behind. */

/* QC_CLAIM_ROUNDS bounds the rounds of one claim. */
#define QC_CLAIM_ROUNDS 4u
/* QC_SWEEP_MS: a claim asks every shard at least this often (new messages land anywhere). */
#define QC_SWEEP_MS 100u
/* QC_BARE_ROUND_MAX bounds the new messages one round leases over all its shards. */
#define QC_BARE_ROUND_MAX 1024u
/* QC_PREFETCH_MAX is the largest first body chunk READ returns with the record. */
#define QC_PREFETCH_MAX (64u * 1024u)

/* qc_bare is a new message leased by a round, to be split. */
struct qc_bare {
    struct qc_bare *next;
    char qid[CMTP_QID_MAX + 1];
    char token[QC_TOKEN_MAX];
    unsigned shard;
    unsigned *homes; /* home shards of its items */
    size_t nh;
};

/* qc_adopt collects the items a round adopts into one home shard. */
struct qc_adopt {
    char *buf; /* item names, back to back */
    size_t len, cap;
    size_t *off; /* start of each name in |buf| */
    size_t n, ncap;
    bool fail;
};

struct qc_claim {
    struct qc_job j;
    struct queue_consumer *c;
    size_t max, got;
    size_t taken;                      /* items leased by the rounds (slots of |wk| used) */
    struct queue_consumer_lease **out; /* ready, |max| slots */
    struct queue_consumer_lease **wk;  /* being validated, indexed by command tag, |max| slots */
    uint8_t *target;                   /* per shard: asked in this round */
    uint8_t *again;                    /* per shard: to ask in the next round */
    struct qc_adopt *ad;               /* per shard: this round's adoptions (NULL: none yet) */
    struct qc_bare *bares;             /* this round's new messages */
    size_t n_bares;
    unsigned round;
    unsigned rpend;   /* CLAIM or ADOPT replies of the round outstanding */
    unsigned pending; /* reads, side scripts and expiries outstanding */
    bool rounds_done, failed;
    void (*cb)(void *arg, int err, struct queue_consumer_lease **leases, size_t n);
    void *arg;
};

static void bares_free(struct qc_claim *cl)
{
    while (cl->bares != NULL) {
        struct qc_bare *b = cl->bares;
        cl->bares = b->next;
        free(b->homes);
        free(b);
    }
    cl->n_bares = 0;
}

static void adopts_free(struct qc_claim *cl)
{
    if (cl->ad == NULL)
        return;
    for (unsigned h = 0; h < cl->c->shards; h++) {
        free(cl->ad[h].buf);
        free(cl->ad[h].off);
    }
    free(cl->ad);
    cl->ad = NULL;
}

static void claim_free(struct qc_claim *cl)
{
    bares_free(cl);
    adopts_free(cl);
    free(cl->out);
    free(cl->wk);
    free(cl->target);
    free(cl->again);
    free(cl);
}

static void claim_destroy(struct qc_job *j)
{
    struct qc_claim *cl = (struct qc_claim *)j;
    for (size_t i = 0; i < cl->got; i++)
        lease_free(cl->out[i]);
    for (size_t i = 0; i < cl->max; i++)
        lease_free(cl->wk[i]);
    claim_free(cl);
}

static void claim_check(struct qc_claim *cl);
static void round_start(struct qc_claim *cl);
static int done_start(struct queue_consumer_lease *l, const struct queue_consumer_outcome *o,
                      size_t n, bool expire, struct qc_claim *parent,
                      void (*cb)(void *arg, const struct queue_consumer_done_result *r), void *arg);

/* claim_sub_done counts one reply (or internal completion) of |cl|; |cl| may be gone after. */
static void claim_sub_done(struct qc_claim *cl)
{
    cl->pending--;
    claim_check(cl);
}

static void on_claim_aux(struct queue_consumer *c, void *ctx, uintptr_t tag, const redisReply *r)
{
    (void)c;
    (void)tag;
    (void)r; /* best effort: a lease left behind expires */
    claim_sub_done(ctx);
}

/* claim_aux sends a script whose outcome does not matter to the claim, counted in |cl|. */
static void claim_aux(struct qc_claim *cl, int script, unsigned shard, size_t nargs,
                      const char *const *args)
{
    if (qc_evals(cl->c, script, shard, nargs, args, on_claim_aux, cl, 0) == 0)
        cl->pending++;
}

static void claim_finish_item(struct qc_claim *cl, const struct queue_consumer_lease *l)
{
    const char *args[3] = {l->item, l->token, "fin"};
    claim_aux(cl, QS_FINISH, l->shard_item, 3, args);
}

/* item_loaded validates the leased item |l| against its message as read: |rec| (|rec_len|
 * octets) the record, or NULL when the message is gone; |ver| its version; |pre| the first body
 * chunk when it came along (else NULL). Then |l| is ready (cl->out), finished, expired,
 * quarantined or left to expire. Does not count |cl|'s pending work down. */
static void item_loaded(struct qc_claim *cl, struct queue_consumer_lease *l, const char *rec,
                        size_t rec_len, const char *ver, size_t ver_len, const char *pre,
                        size_t pre_len)
{
    struct queue_consumer *c = cl->c;
    char why[QUEUE_REASON_MAX];
    enum queue_record_err e;

    if (rec == NULL) {
        /* The message was deleted, quarantined or finished by another item's completion. */
        c->st.orphans++;
        emit(c, QUEUE_CONSUMER_EV_ORPHAN, l->qid, l->dest, "message gone", 0);
        claim_finish_item(cl, l);
        lease_free(l);
        return;
    }
    if (ver_len >= sizeof(l->ver)) {
        lease_free(l); /* left to expire */
        return;
    }
    e = decode_check(l->qid, rec, rec_len, &l->rec, why, sizeof(why));
    if (e == QUEUE_RECORD_ERR_NOMEM) {
        lease_free(l);
        return;
    }
    if (e != QUEUE_RECORD_OK) {
        const char *qargs[3] = {l->qid, why, ""};
        c->st.quarantined++;
        emit(c, QUEUE_CONSUMER_EV_QUARANTINED, l->qid, l->dest, why, 0);
        claim_aux(cl, QS_QUARANTINE, l->shard_msg, 3, qargs);
        claim_finish_item(cl, l);
        lease_free(l);
        return;
    }
    memcpy(l->ver, ver, ver_len);
    l->ver[ver_len] = '\0';
    if (lease_select(l) < 0) {
        lease_free(l);
        return;
    }
    if (l->n_rcpts == 0) {
        /* Finished by an earlier completion whose item step was lost. */
        claim_finish_item(cl, l);
        lease_free(l);
        return;
    }
    if (wall_ms() >= l->rec->created_ms + (int64_t)c->lifetime_ms) {
        if (done_start(l, NULL, 0, true, cl, NULL, NULL) == 0)
            cl->pending++;
        else
            lease_free(l);
        return;
    }
    /* The first body chunk, when it came along (a copy: the reply is freed after this). */
    if (pre != NULL && pre_len > 0 && pre_len <= l->rec->env.size) {
        l->pre = malloc(pre_len);
        if (l->pre != NULL) {
            memcpy(l->pre, pre, pre_len);
            l->pre_len = pre_len;
        }
    }
    cl->out[cl->got++] = l;
    c->st.claimed++;
}

static void on_item_read(struct queue_consumer *c, void *ctx, uintptr_t tag, const redisReply *r)
{
    struct qc_claim *cl = ctx;
    struct queue_consumer_lease *l = cl->wk[tag];
    (void)c;

    cl->wk[tag] = NULL;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 3 || !r_str(r->element[1]) ||
        (r->element[0]->type != REDIS_REPLY_NIL && !r_str(r->element[0]))) {
        lease_free(l); /* left to expire */
    } else {
        const redisReply *rec = r->element[0], *ver = r->element[1], *pre = r->element[2];
        item_loaded(cl, l, r_str(rec) ? rec->str : NULL, r_str(rec) ? rec->len : 0, ver->str,
                    ver->len, r_str(pre) ? pre->str : NULL, r_str(pre) ? pre->len : 0);
    }
    claim_sub_done(cl);
}

static unsigned pre_bucket(const char *qid)
{
    uint32_t h = 2166136261u;
    for (const char *p = qid; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    return h % QC_PRE_BUCKETS;
}

/* cache_now is the clock of the cache's ages: monotonic, the same for every thread. */
static uint64_t cache_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* pre_drop unlinks and frees |p|. The cache's lock is held. */
static void pre_drop(struct queue_consumer_cache *k, struct qc_pre *p)
{
    struct qc_pre **pp = &k->index[pre_bucket(p->qid)];
    while (*pp != NULL && *pp != p)
        pp = &(*pp)->hnext;
    if (*pp == p)
        *pp = p->hnext;
    if (p->prev)
        p->prev->next = p->next;
    else
        k->head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        k->tail = p->prev;
    k->bytes -= p->rec_len + p->body_len;
    free(p->rec);
    free(p);
}

/* pre_expire drops the entries older than QC_PRE_AGE_MS, and the oldest ones while |need| more
 * octets would not fit. The cache's lock is held. */
static void pre_expire(struct queue_consumer_cache *k, size_t need, uint64_t now)
{
    while (k->head != NULL && (now - k->head->at_ms >= QC_PRE_AGE_MS || k->bytes + need > k->max))
        pre_drop(k, k->head);
}

struct queue_consumer_cache *queue_consumer_cache_new(size_t max_bytes)
{
    struct queue_consumer_cache *k = calloc(1, sizeof(*k));
    if (k == NULL)
        return NULL;
    if (pthread_mutex_init(&k->mu, NULL) != 0) {
        free(k);
        return NULL;
    }
    k->max = max_bytes ? max_bytes : QC_PRE_MAX;
    return k;
}

void queue_consumer_cache_free(struct queue_consumer_cache *k)
{
    if (k == NULL)
        return;
    while (k->head != NULL)
        pre_drop(k, k->head);
    pthread_mutex_destroy(&k->mu);
    free(k);
}

/* pre_keep remembers what the claim read of the new message |qid| with |uses| destinations (see
 * qc_pre). Out of room or memory, its items are read again (READ). */
static void pre_keep(struct queue_consumer *c, const char *qid, const redisReply *env,
                     const redisReply *ver, const redisReply *body, size_t uses)
{
    struct queue_consumer_cache *k = c->cache;
    size_t bl = r_str(body) ? body->len : 0;
    if (!r_str(env) || !r_str(ver) || ver->len >= sizeof(k->head->ver) || uses == 0 ||
        env->len + bl > k->max / 4)
        return;
    struct qc_pre *p = calloc(1, sizeof(*p));
    uint8_t *buf = malloc(env->len + bl + 1);
    if (p == NULL || buf == NULL) {
        free(p);
        free(buf);
        return;
    }
    snprintf(p->qid, sizeof(p->qid), "%s", qid);
    memcpy(p->ver, ver->str, ver->len);
    p->ver_len = ver->len;
    memcpy(buf, env->str, env->len);
    if (bl > 0)
        memcpy(buf + env->len, body->str, bl);
    p->rec = buf;
    p->rec_len = env->len;
    p->body = buf + env->len;
    p->body_len = bl;
    p->has_body = r_str(body);
    p->uses_left = uses > UINT_MAX ? UINT_MAX : (unsigned)uses;
    unsigned b = pre_bucket(qid);
    pthread_mutex_lock(&k->mu);
    p->at_ms = cache_now();
    pre_expire(k, env->len + bl, p->at_ms);
    p->hnext = k->index[b];
    k->index[b] = p;
    p->prev = k->tail;
    if (k->tail)
        k->tail->next = p;
    else
        k->head = p;
    k->tail = p;
    k->bytes += env->len + bl;
    pthread_mutex_unlock(&k->mu);
}

/* pre_take returns a copy of the kept entry of |qid| (free its |rec| and itself), one of its
 * uses taken, or NULL (none, too old, or out of memory). */
static struct qc_pre *pre_take(struct queue_consumer *c, const char *qid)
{
    struct queue_consumer_cache *k = c->cache;
    struct qc_pre *out = NULL;

    pthread_mutex_lock(&k->mu);
    for (struct qc_pre *p = k->index[pre_bucket(qid)]; p != NULL; p = p->hnext) {
        if (strcmp(p->qid, qid) != 0)
            continue;
        if (cache_now() - p->at_ms >= QC_PRE_AGE_MS) {
            pre_drop(k, p);
            break;
        }
        out = calloc(1, sizeof(*out));
        uint8_t *buf = out ? malloc(p->rec_len + p->body_len + 1) : NULL;
        if (buf == NULL) {
            free(out);
            out = NULL;
            break;
        }
        *out = *p;
        memcpy(buf, p->rec, p->rec_len + p->body_len);
        out->rec = buf;
        out->body = buf + p->rec_len;
        out->prev = out->next = out->hnext = NULL;
        if (--p->uses_left == 0)
            pre_drop(k, p);
        break;
    }
    pthread_mutex_unlock(&k->mu);
    return out;
}

/* claim_take_item turns the work item |item| (of message |qid| in shard |smsg|, destination
 * |dest|), leased with |token| on its home shard |shard| at Redis time |now|, into a lease of
 * |cl|: from the record this consumer kept when it split the message (no READ), else read. */
static void claim_take_item(struct qc_claim *cl, const char *item, size_t item_len, const char *qid,
                            const char *dest, unsigned smsg, unsigned shard, const char *token,
                            uint32_t tries, uint32_t crashes, long long now)
{
    struct queue_consumer *c = cl->c;

    if (cl->taken >= cl->max)
        return; /* cannot happen (the batches sum to the room left): it expires */
    struct queue_consumer_lease *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return;
    l->c = c;
    memcpy(l->item, item, item_len);
    l->item[item_len] = '\0';
    snprintf(l->qid, sizeof(l->qid), "%s", qid);
    snprintf(l->dest, sizeof(l->dest), "%s", dest);
    snprintf(l->token, sizeof(l->token), "%s", token);
    l->shard_msg = smsg;
    l->shard_item = shard;
    l->tries = tries;
    l->crashes = crashes;
    l->expires_ms = (int64_t)now + c->lease_ms;
    struct qc_pre *pre = pre_take(c, qid);
    if (pre != NULL) {
        /* Split moments ago, by this consumer or another of the cache's: the record read then
         * (no READ). */
        cl->taken++;
        item_loaded(cl, l, (const char *)pre->rec, pre->rec_len, pre->ver, pre->ver_len,
                    pre->has_body ? (const char *)pre->body : NULL, pre->body_len);
        c->st.prefetched++;
        free(pre->rec);
        free(pre);
        return;
    }
    char pmax[16];
    snprintf(pmax, sizeof(pmax), "%u", QC_PREFETCH_MAX);
    const char *args[2] = {qid, pmax};
    size_t slot = cl->taken++;
    cl->wk[slot] = l;
    if (qc_evals(c, QS_READ, smsg, 2, args, on_item_read, cl, slot) == 0) {
        cl->pending++;
    } else {
        cl->wk[slot] = NULL;
        lease_free(l);
    }
}

/* adopt_add appends the item `<qid>/<dest>` to |cl|'s adoptions into home shard |h|. */
static int adopt_add(struct qc_claim *cl, unsigned h, const char *qid, const char *dest)
{
    struct queue_consumer *c = cl->c;
    size_t ql = strlen(qid), dl = strlen(dest);
    struct qc_adopt *a;

    if (cl->ad == NULL) {
        cl->ad = calloc(c->shards, sizeof(*cl->ad));
        if (cl->ad == NULL)
            return -ENOMEM;
    }
    a = &cl->ad[h];
    if (a->len + ql + 1 + dl > a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 4096;
        while (cap < a->len + ql + 1 + dl)
            cap *= 2;
        char *nb = realloc(a->buf, cap);
        if (nb == NULL)
            return -ENOMEM;
        a->buf = nb;
        a->cap = cap;
    }
    if (a->n == a->ncap) {
        size_t ncap = a->ncap ? a->ncap * 2 : 32;
        size_t *no = realloc(a->off, (ncap + 1) * sizeof(*no));
        if (no == NULL)
            return -ENOMEM;
        a->off = no;
        a->ncap = ncap;
    }
    a->off[a->n++] = a->len;
    memcpy(a->buf + a->len, qid, ql);
    a->buf[a->len + ql] = '/';
    memcpy(a->buf + a->len + ql + 1, dest, dl);
    a->len += ql + 1 + dl;
    a->off[a->n] = a->len;
    return 0;
}

/* bare_take records the new message |qid| (leased with |token| on |shard|, record |env|) for
 * the round's split. */
static void bare_take(struct qc_claim *cl, unsigned shard, const char *qid, const char *token,
                      const redisReply *env, const redisReply *ver, const redisReply *body)
{
    struct queue_consumer *c = cl->c;
    struct queue_record *rec = NULL;
    char why[QUEUE_REASON_MAX];
    const char **dests = NULL;
    size_t nd = 0;
    enum queue_record_err e;
    struct qc_bare *b;

    if (env == NULL || env->type == REDIS_REPLY_NIL || !r_str(env)) {
        const char *args[3] = {qid, token, "fin"};
        claim_aux(cl, QS_FINISH, shard, 3, args);
        return;
    }
    e = decode_check(qid, env->str, env->len, &rec, why, sizeof(why));
    if (e == QUEUE_RECORD_ERR_NOMEM)
        return; /* the lease expires; tried again */
    if (e != QUEUE_RECORD_OK) {
        const char *args[3] = {qid, why, token};
        c->st.quarantined++;
        emit(c, QUEUE_CONSUMER_EV_QUARANTINED, qid, "", why, 0);
        claim_aux(cl, QS_QUARANTINE, shard, 3, args);
        return;
    }
    dests = dest_list(rec, true, &nd);
    b = calloc(1, sizeof(*b));
    if (nd == SIZE_MAX || b == NULL ||
        (nd > 0 && (b->homes = calloc(nd, sizeof(unsigned))) == NULL)) {
        free(b);
        goto out; /* out of memory: the lease expires */
    }
    snprintf(b->qid, sizeof(b->qid), "%s", qid);
    snprintf(b->token, sizeof(b->token), "%s", token);
    b->shard = shard;
    for (size_t i = 0; i < nd; i++) {
        unsigned h = queue_consumer_item_shard(dests[i], c->shards);
        bool seen = false;
        if (adopt_add(cl, h, qid, dests[i]) < 0) {
            free(b->homes);
            free(b);
            goto out; /* out of memory: the lease expires (items added stay: ADOPT skips) */
        }
        for (size_t k = 0; k < b->nh && !seen; k++)
            seen = b->homes[k] == h;
        if (!seen)
            b->homes[b->nh++] = h;
    }
    b->next = cl->bares;
    cl->bares = b;
    cl->n_bares++;
    if (nd > 0)
        pre_keep(c, qid, env, ver, body, nd);
out:
    free(dests);
    queue_record_cleanup(rec);
    free(rec);
}

/* round_finish_bares ends the round's split: each new message whose items all exist now is
 * finished, the others go back, due now (one FINISHN per message shard). */
static void round_finish_bares(struct qc_claim *cl)
{
    struct queue_consumer *c = cl->c;
    const char **args = NULL;
    size_t *lens = NULL;
    size_t n = 0;

    if (cl->n_bares == 0)
        return;
    args = calloc(cl->n_bares * 5, sizeof(*args));
    lens = calloc(cl->n_bares * 5, sizeof(*lens));
    if (args == NULL || lens == NULL)
        goto out; /* out of memory: the leases expire, the split is repeated (ADOPT skips) */
    for (unsigned s = 0; s < c->shards; s++) {
        n = 0;
        for (struct qc_bare *b = cl->bares; b != NULL; b = b->next) {
            bool fail = false;
            if (b->shard != s)
                continue;
            for (size_t k = 0; k < b->nh; k++)
                fail = fail || cl->ad == NULL || cl->ad[b->homes[k]].fail;
            args[n] = b->qid;
            lens[n++] = strlen(b->qid);
            args[n] = b->token;
            lens[n++] = strlen(b->token);
            args[n] = fail ? "release" : "fin";
            lens[n] = strlen(args[n]);
            n++;
            args[n] = "0";
            lens[n++] = 1;
            args[n] = "";
            lens[n++] = 0;
            if (!fail && b->nh > 0)
                c->st.adopted++;
            if (fail)
                c->busy_hint[s] = 1; /* due again now */
        }
        if (n > 0 && qc_eval(c, QS_FINISHN, s, n, args, lens, on_claim_aux, cl, 0) == 0)
            cl->pending++;
    }
out:
    free(args);
    free(lens);
}

/* round_end closes a round: the split is finished and the next round (if any) starts. */
static void round_end(struct qc_claim *cl)
{
    struct queue_consumer *c = cl->c;
    bool more = false;

    round_finish_bares(cl);
    bares_free(cl);
    adopts_free(cl);
    for (unsigned s = 0; s < c->shards; s++)
        more = more || cl->again[s];
    if (!cl->failed && more && cl->round < QC_CLAIM_ROUNDS && cl->taken < cl->max) {
        memcpy(cl->target, cl->again, c->shards);
        round_start(cl);
        if (cl->rpend > 0)
            return;
    }
    cl->rounds_done = true;
    claim_check(cl);
}

static void on_adopt(struct queue_consumer *c, void *ctx, uintptr_t tag, const redisReply *r)
{
    struct qc_claim *cl = ctx;
    unsigned h = (unsigned)tag;
    long long added, now;
    char qid[CMTP_QID_MAX + 1], dest[CMTP_DOMAIN_MAX + 1];
    unsigned smsg;

    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
        !r_ll(r->element[0], &added) || r->element[1]->type != REDIS_REPLY_ARRAY ||
        !r_ll(r->element[2], &now)) {
        cl->ad[h].fail = true;
    } else {
        const redisReply *lz = r->element[1];
        if ((size_t)added > lz->elements)
            cl->again[h] = c->busy_hint[h] = 1; /* new items are due there now */
        for (size_t i = 0; i < lz->elements; i++) {
            const redisReply *e = lz->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || !r_str(e->element[0]) ||
                !r_str(e->element[1]) || e->element[1]->len >= QC_TOKEN_MAX ||
                !split_item(c, e->element[0]->str, e->element[0]->len, qid, dest, &smsg) ||
                dest[0] == '\0')
                continue; /* malformed: its lease expires */
            char token[QC_TOKEN_MAX];
            memcpy(token, e->element[1]->str, e->element[1]->len);
            token[e->element[1]->len] = '\0';
            c->st.adopt_leased++;
            claim_take_item(cl, e->element[0]->str, e->element[0]->len, qid, dest, smsg, h, token,
                            0, 0, now);
        }
    }
    if (--cl->rpend == 0)
        round_end(cl);
}

/* round_adopt sends the round's adoptions, one ADOPT per home shard. The room the claim has
 * left is shared between them in order: each may lease that many of its new items at once. */
static void round_adopt(struct qc_claim *cl)
{
    struct queue_consumer *c = cl->c;
    size_t room = cl->max - cl->taken;
    char tokp[QC_TOKEN_MAX], lease_s[16], conc_s[16], room_s[16];

    snprintf(lease_s, sizeof(lease_s), "%u", c->lease_ms);
    snprintf(conc_s, sizeof(conc_s), "%u", c->conc);
    for (unsigned h = 0; cl->ad != NULL && h < c->shards; h++) {
        struct qc_adopt *a = &cl->ad[h];
        if (a->n == 0)
            continue;
        size_t share = a->n < room ? a->n : room;
        room -= share;
        const char **args = calloc(a->n + 4, sizeof(*args));
        size_t *lens = calloc(a->n + 4, sizeof(*lens));
        int rc = -ENOMEM;
        if (args != NULL && lens != NULL) {
            snprintf(tokp, sizeof(tokp), "%s#%016llx#", c->node, (unsigned long long)rng_next(c));
            snprintf(room_s, sizeof(room_s), "%zu", share);
            const char *head[4] = {tokp, lease_s, conc_s, room_s};
            for (size_t i = 0; i < 4; i++) {
                args[i] = head[i];
                lens[i] = strlen(head[i]);
            }
            for (size_t i = 0; i < a->n; i++) {
                args[4 + i] = a->buf + a->off[i];
                lens[4 + i] = a->off[i + 1] - a->off[i];
            }
            rc = qc_eval(c, QS_ADOPT, h, a->n + 4, args, lens, on_adopt, cl, h);
        }
        free(args);
        free(lens);
        if (rc == 0)
            cl->rpend++;
        else
            a->fail = true;
    }
    if (cl->rpend == 0)
        round_end(cl);
}

static void on_claim_reply(struct queue_consumer *c, void *ctx, uintptr_t tag, const redisReply *r)
{
    struct qc_claim *cl = ctx;
    unsigned shard = (unsigned)tag;
    long long now, more = 0, busy = 0;
    char qid[CMTP_QID_MAX + 1], dest[CMTP_DOMAIN_MAX + 1], text[QUEUE_REASON_MAX];
    unsigned smsg;

    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 7 ||
        !r_ll(r->element[0], &now) || r->element[1]->type != REDIS_REPLY_ARRAY ||
        r->element[2]->type != REDIS_REPLY_ARRAY || !r_ll(r->element[3], &more) ||
        !r_ll(r->element[4], &busy) || !r_str(r->element[5]) || !r_str(r->element[6])) {
        if (r != NULL && r->type == REDIS_REPLY_ERROR) {
            r_text(r, text, sizeof(text));
            set_error(c, "redis claim failed", text);
        }
        cl->failed = true;
        goto out;
    }
    c->busy_hint[shard] = busy || more;
    c->more_hint[shard] = more != 0;
    struct qc_anchor *an = &c->anchor[shard];
    if (r->element[5]->len < sizeof(an->item) && r->element[6]->len < sizeof(an->score)) {
        memcpy(an->item, r->element[5]->str, r->element[5]->len);
        an->item[r->element[5]->len] = '\0';
        memcpy(an->score, r->element[6]->str, r->element[6]->len);
        an->score[r->element[6]->len] = '\0';
    } else {
        an->item[0] = an->score[0] = '\0';
    }
    if (more)
        cl->again[shard] = 1;
    for (size_t i = 0; i < r->element[1]->elements; i++) {
        const redisReply *d = r->element[1]->element[i];
        if (d->type != REDIS_REPLY_ARRAY || d->elements != 2 || !r_str(d->element[0]) ||
            !split_item(c, d->element[0]->str, d->element[0]->len, qid, dest, &smsg))
            continue;
        c->st.dead++;
        emit(c, QUEUE_CONSUMER_EV_DEAD, qid, dest, "lease expired without completion",
             r_u32(d->element[1]));
    }
    const redisReply *items = r->element[2];
    for (size_t i = 0; i < items->elements; i++) {
        const redisReply *e = items->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 7 || !r_str(e->element[0]) ||
            !r_str(e->element[1]) || e->element[1]->len >= QC_TOKEN_MAX ||
            !split_item(c, e->element[0]->str, e->element[0]->len, qid, dest, &smsg))
            continue; /* malformed: its lease expires */
        char token[QC_TOKEN_MAX];
        memcpy(token, e->element[1]->str, e->element[1]->len);
        token[e->element[1]->len] = '\0';
        if (dest[0] == '\0') {
            bare_take(cl, shard, qid, token, e->element[4], e->element[5], e->element[6]);
            continue;
        }
        claim_take_item(cl, e->element[0]->str, e->element[0]->len, qid, dest, smsg, shard, token,
                        r_u32(e->element[2]), r_u32(e->element[3]), now);
    }
out:
    if (--cl->rpend == 0)
        round_adopt(cl);
}

/* round_start sends the CLAIM script to every shard of cl->target, sharing the room left
 * between them (first between the shards that had more than their share last time). */
static void round_start(struct qc_claim *cl)
{
    struct queue_consumer *c = cl->c;
    char tokp[QC_TOKEN_MAX], lease_s[16], batch_s[16], conc_s[16], crash_s[16], scan_s[16];
    char bare_s[16], pmax_s[16];
    unsigned m = 0, mp = 0;
    size_t room = cl->max - cl->taken;

    cl->round++;
    memset(cl->again, 0, c->shards);
    for (unsigned s = 0; s < c->shards; s++) {
        if (!cl->target[s])
            continue;
        m++;
        mp += c->more_hint[s];
    }
    if (m == 0)
        return;
    size_t bbatch = QC_BARE_ROUND_MAX / m;
    if (bbatch > c->batch)
        bbatch = c->batch;
    if (bbatch == 0)
        bbatch = 1;
    unsigned share_n = mp > 0 ? mp : m, k = 0;
    snprintf(lease_s, sizeof(lease_s), "%u", c->lease_ms);
    snprintf(conc_s, sizeof(conc_s), "%u", c->conc);
    snprintf(crash_s, sizeof(crash_s), "%u", c->crash_max);
    snprintf(bare_s, sizeof(bare_s), "%zu", bbatch);
    snprintf(pmax_s, sizeof(pmax_s), "%u", QC_PREFETCH_MAX);
    for (unsigned i = 0; i < c->shards; i++) {
        unsigned s = (c->claim_cursor + i) % c->shards;
        size_t batch = 0;
        if (!cl->target[s])
            continue;
        if (mp == 0 || c->more_hint[s]) {
            batch = room / share_n + (k < room % share_n ? 1 : 0);
            k++;
        }
        size_t scan = (batch + bbatch) * 8;
        if (scan < 256)
            scan = 256;
        if (scan > 8192)
            scan = 8192;
        snprintf(tokp, sizeof(tokp), "%s#%016llx#", c->node, (unsigned long long)rng_next(c));
        snprintf(batch_s, sizeof(batch_s), "%zu", batch);
        snprintf(scan_s, sizeof(scan_s), "%zu", scan);
        struct qc_anchor *an = &c->anchor[s];
        uint64_t now = loop_now(c);
        if (an->item[0] == '\0' || now - an->rescan_ms >= QC_RESCAN_MS) {
            an->item[0] = an->score[0] = '\0';
            an->rescan_ms = now;
        }
        const char *args[10] = {tokp,   lease_s, batch_s, conc_s,   crash_s,
                                scan_s, bare_s,  pmax_s,  an->item, an->score};
        if (qc_evals(c, QS_CLAIM, s, 10, args, on_claim_reply, cl, s) == 0)
            cl->rpend++;
        else
            cl->failed = true;
    }
    c->claim_cursor = (c->claim_cursor + 1) % c->shards;
}

/* claim_check ends |cl| once its rounds and everything they started are done. */
static void claim_check(struct qc_claim *cl)
{
    struct queue_consumer *c = cl->c;

    if (!cl->rounds_done || cl->rpend > 0 || cl->pending > 0)
        return;
    job_del(c, &cl->j);
    int err = cl->failed && cl->got == 0 ? (c->rc.state == QUEUE_CONNECTED ? -EIO : -ENOTCONN) : 0;
    if (cl->cb)
        cl->cb(cl->arg, err, cl->out, cl->got);
    claim_free(cl);
}

int queue_consumer_claim(struct queue_consumer *c, size_t max,
                         void (*cb)(void *arg, int err, struct queue_consumer_lease **leases,
                                    size_t n),
                         void *arg)
{
    struct qc_claim *cl;
    uint64_t now;
    bool sweep;

    if (c == NULL || cb == NULL || max == 0 || max > QUEUE_CONSUMER_CLAIM_MAX)
        return -EINVAL;
    if (c->rc.state != QUEUE_CONNECTED)
        return -ENOTCONN;
    if (c->inflight >= c->inflight_max)
        return -EAGAIN;
    cl = calloc(1, sizeof(*cl));
    if (cl == NULL)
        return -ENOMEM;
    cl->c = c;
    cl->max = max;
    cl->out = calloc(max, sizeof(*cl->out));
    cl->wk = calloc(max, sizeof(*cl->wk));
    cl->target = calloc(c->shards, 1);
    cl->again = calloc(c->shards, 1);
    if (cl->out == NULL || cl->wk == NULL || cl->target == NULL || cl->again == NULL) {
        claim_free(cl);
        return -ENOMEM;
    }
    cl->cb = cb;
    cl->arg = arg;
    now = loop_now(c);
    sweep = !c->swept || now - c->sweep_ms >= QC_SWEEP_MS;
    if (!sweep) {
        unsigned n = 0;
        for (unsigned s = 0; s < c->shards; s++)
            n += (cl->target[s] = c->busy_hint[s]);
        sweep = n == 0;
    }
    if (sweep) {
        memset(cl->target, 1, c->shards);
        c->swept = true;
        c->sweep_ms = now;
    }
    round_start(cl);
    if (cl->rpend == 0) {
        claim_free(cl);
        return c->rc.state == QUEUE_CONNECTED ? -EIO : -ENOTCONN;
    }
    job_add(c, &cl->j, claim_destroy);
    return 0;
}

/* ---- report items ---- */

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* QC_REPORT_HEAD is magic, version, flags, length and at_ms. */
#define QC_REPORT_HEAD 20u

/* report_encode writes a report item (format: queue_consumer_report_decode). */
static int report_encode(const char *qid, const char *dest, int64_t at_ms, uint16_t flags,
                         const struct queue_consumer_report_rcpt *rc, size_t n,
                         const uint8_t *record, size_t record_len, uint8_t **out, size_t *out_len)
{
    size_t ql = strlen(qid), dl = strlen(dest);
    size_t total = QC_REPORT_HEAD + 2 + ql + 2 + dl + 4 + 4 + record_len + 4;
    uint8_t *b, *p;

    *out = NULL;
    for (size_t i = 0; i < n; i++)
        total += 4 + 1 + 2 + strlen(rc[i].reason);
    if (total > UINT32_MAX || n > UINT32_MAX)
        return -E2BIG;
    b = malloc(total);
    if (b == NULL)
        return -ENOMEM;
    p = b;
    memcpy(p, QUEUE_CONSUMER_REPORT_MAGIC, 4);
    put16(p + 4, QUEUE_CONSUMER_REPORT_VERSION);
    put16(p + 6, flags);
    put32(p + 8, (uint32_t)total);
    put32(p + 12, (uint32_t)((uint64_t)at_ms >> 32));
    put32(p + 16, (uint32_t)at_ms);
    p += QC_REPORT_HEAD;
    put16(p, (uint16_t)ql);
    memcpy(p + 2, qid, ql);
    p += 2 + ql;
    put16(p, (uint16_t)dl);
    memcpy(p + 2, dest, dl);
    p += 2 + dl;
    put32(p, (uint32_t)n);
    p += 4;
    for (size_t i = 0; i < n; i++) {
        size_t rl = strlen(rc[i].reason);
        put32(p, rc[i].rcpt);
        p[4] = (uint8_t)rc[i].status;
        put16(p + 5, (uint16_t)rl);
        memcpy(p + 7, rc[i].reason, rl);
        p += 7 + rl;
    }
    put32(p, (uint32_t)record_len);
    memcpy(p + 4, record, record_len);
    p += 4 + record_len;
    put32(p, queue_crc32c(0, b, (size_t)(p - b)));
    *out = b;
    *out_len = total;
    return 0;
}

/* rd_str reads a u16-framed string of at most |max| octets without NUL into |out|. */
static bool rd_str(const uint8_t **p, const uint8_t *end, char *out, size_t max)
{
    if (end - *p < 2)
        return false;
    size_t n = get16(*p);
    if (n > max || (size_t)(end - *p - 2) < n || memchr(*p + 2, '\0', n) != NULL)
        return false;
    memcpy(out, *p + 2, n);
    out[n] = '\0';
    *p += 2 + n;
    return true;
}

int queue_consumer_report_decode(struct queue_consumer_report *out, const uint8_t *buf, size_t len)
{
    const uint8_t *p, *end;
    uint32_t n, rl;
    int rc = -EBADMSG;

    memset(out, 0, sizeof(*out));
    if (buf == NULL || len < QC_REPORT_HEAD + 4 + 4 + 4 + 4 ||
        memcmp(buf, QUEUE_CONSUMER_REPORT_MAGIC, 4) != 0 ||
        get16(buf + 4) != QUEUE_CONSUMER_REPORT_VERSION ||
        (get16(buf + 6) & ~QUEUE_CONSUMER_REPORT_F_HEADERS) != 0)
        return -EBADMSG;
    size_t total = get32(buf + 8);
    if (total < QC_REPORT_HEAD + 4 + 4 + 4 + 4 || total > len)
        return -EBADMSG;
    if (total < len) {
        /* the message start the queue attached: "HDRS", u32 m, m octets */
        size_t m = len - total;
        if (!(get16(buf + 6) & QUEUE_CONSUMER_REPORT_F_HEADERS) || m < 8 ||
            memcmp(buf + total, "HDRS", 4) != 0 || get32(buf + total + 4) != m - 8 ||
            m - 8 > QUEUE_CONSUMER_REPORT_HEADERS_MAX)
            return -EBADMSG;
    }
    if (queue_crc32c(0, buf, total - 4) != get32(buf + total - 4))
        return -EBADMSG;
    out->at_ms = (int64_t)((uint64_t)get32(buf + 12) << 32 | get32(buf + 16));
    p = buf + QC_REPORT_HEAD;
    end = buf + total - 4;
    if (!rd_str(&p, end, out->qid, CMTP_QID_MAX) || out->qid[0] == '\0' ||
        !rd_str(&p, end, out->dest, CMTP_DOMAIN_MAX) || end - p < 4)
        goto err;
    n = get32(p);
    p += 4;
    /* Each entry takes at least 7 octets: bound the allocation by what the item can hold. */
    if (n == 0 || n > CMTP_RCPT_MAX_HARD || (size_t)(end - p) / 7 < n)
        goto err;
    out->rcpts = calloc(n, sizeof(*out->rcpts));
    if (out->rcpts == NULL) {
        rc = -ENOMEM;
        goto err;
    }
    for (uint32_t i = 0; i < n; i++) {
        struct queue_consumer_report_rcpt *e = &out->rcpts[i];
        if (end - p < 7)
            goto err;
        e->rcpt = get32(p);
        if (p[4] != QUEUE_RCPT_FAILED && p[4] != QUEUE_RCPT_EXPIRED)
            goto err;
        e->status = (enum queue_rcpt_status)p[4];
        p += 5;
        if (!rd_str(&p, end, e->reason, QUEUE_REASON_MAX - 1))
            goto err;
    }
    out->n_rcpts = n;
    if (end - p < 4)
        goto err;
    rl = get32(p);
    p += 4;
    if ((size_t)(end - p) != rl)
        goto err;
    out->record = malloc(sizeof(*out->record));
    if (out->record == NULL) {
        rc = -ENOMEM;
        goto err;
    }
    enum queue_record_err e = queue_record_decode(out->record, p, rl);
    if (e != QUEUE_RECORD_OK) {
        free(out->record);
        out->record = NULL;
        rc = e == QUEUE_RECORD_ERR_NOMEM ? -ENOMEM : -EBADMSG;
        goto err;
    }
    for (size_t i = 0; i < out->n_rcpts; i++)
        if (out->rcpts[i].rcpt >= out->record->n_rcpts)
            goto err;
    if (total + 8 < len) {
        out->headers_len = len - total - 8;
        out->headers = malloc(out->headers_len);
        if (out->headers == NULL) {
            rc = -ENOMEM;
            goto err;
        }
        memcpy(out->headers, buf + total + 8, out->headers_len);
    }
    return 0;
err:
    queue_consumer_report_cleanup(out);
    return rc;
}

void queue_consumer_report_cleanup(struct queue_consumer_report *r)
{
    if (r == NULL)
        return;
    if (r->record != NULL) {
        queue_record_cleanup(r->record);
        free(r->record);
    }
    free(r->rcpts);
    free(r->headers);
    memset(r, 0, sizeof(*r));
}

/* ---- completion ---- */

struct qc_done {
    struct qc_job j;
    struct queue_consumer *c;
    struct queue_consumer_lease *l;
    struct queue_consumer_outcome *o;
    char (*reasons)[QUEUE_REASON_MAX];
    size_t n;
    bool expire; /* the claim found it past the lifetime: expire, no attempt */
    unsigned stale;
    uint64_t delay_ms;
    bool dest_final, all_final;
    char temp_reason[QUEUE_REASON_MAX];
    bool fin;                 /* finish the item (else reschedule it) */
    struct qc_done *fin_next; /* the consumer's list of items waiting to be finished */
    struct queue_consumer_done_result res;
    void (*cb)(void *arg, const struct queue_consumer_done_result *r);
    void *arg;
    struct qc_claim *parent;
};

static void done_destroy(struct qc_job *j)
{
    struct qc_done *d = (struct qc_done *)j;
    lease_free(d->l);
    free(d->o);
    free(d->reasons);
    free(d);
}

/* backoff returns min(retry_max, retry_base * 2^tries) less up to a quarter of jitter. */
static uint64_t backoff(struct queue_consumer *c, uint32_t tries)
{
    uint64_t d = c->retry_base_ms;
    for (uint32_t i = 0; i < tries && d < c->retry_max_ms; i++)
        d *= 2;
    if (d > c->retry_max_ms)
        d = c->retry_max_ms;
    uint64_t j = d / 4;
    return d - (j ? rng_next(c) % (j + 1) : 0);
}

static void done_complete(struct qc_done *d)
{
    struct queue_consumer *c = d->c;
    struct queue_consumer_done_result res = d->res;
    void (*cb)(void *, const struct queue_consumer_done_result *) = d->cb;
    void *arg = d->arg;
    struct qc_claim *parent = d->parent;

    job_del(c, &d->j);
    done_destroy(&d->j);
    if (parent != NULL)
        claim_sub_done(parent);
    else if (cb != NULL)
        cb(arg, &res);
}

static void done_error(struct qc_done *d, const char *why)
{
    d->res.status = QUEUE_CONSUMER_DONE_ERROR;
    snprintf(d->res.reason, sizeof(d->res.reason), "%s", why);
    done_complete(d);
}

static int done_apply(struct qc_done *d);

/* done_finished ends |d| with |e|, its entry of the FINISHN reply (NULL: none came back). */
static void done_finished(struct qc_done *d, const redisReply *e)
{
    struct queue_consumer *c = d->c;
    long long at = 0;

    if (e == NULL || !r_str(e)) {
        /* The record is updated; the item's lease expires and a claim finds it done. */
        done_error(d, "redis: work item not finished (its lease will expire)");
        return;
    }
    if (r_is(e, "lost")) {
        if (d->res.status == QUEUE_CONSUMER_DONE_OK) {
            d->res.status = QUEUE_CONSUMER_DONE_LOST;
            c->st.lost++;
            emit(c, QUEUE_CONSUMER_EV_LEASE_LOST, d->l->qid, d->l->dest,
                 "lease taken over before completion", 0);
        }
    } else if (!d->dest_final && d->res.status == QUEUE_CONSUMER_DONE_OK && r_ll(e, &at)) {
        d->res.rescheduled = true;
        d->res.next_attempt_ms = at;
        c->st.retried++;
    }
    done_complete(d);
}

/* qc_finb is one FINISHN sent for the completions of one home shard. It is a job only so that
 * queue_consumer_free frees it; the completions are jobs of their own. */
struct qc_finb {
    struct qc_job j;
    size_t n;
    struct qc_done *d[];
};

static void finb_destroy(struct qc_job *j)
{
    free(j);
}

static void on_finb(struct queue_consumer *c, void *ctx, uintptr_t tag, const redisReply *r)
{
    struct qc_finb *b = ctx;
    bool ok = r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == b->n;
    (void)tag;

    job_del(c, &b->j);
    for (size_t i = 0; i < b->n; i++)
        done_finished(b->d[i], ok ? r->element[i] : NULL);
    free(b);
}

/* fin_send sends one FINISHN for up to QC_FIN_BATCH_MAX completions waiting on the home shard of
 * the first one, taking them off the list; those it cannot send end in an error. */
static void fin_send(struct queue_consumer *c)
{
    unsigned shard = c->fin_head->l->shard_item;
    size_t n = 0, want = 0;
    /* Sized for this shard's batch: this runs once per home shard per loop iteration. */
    for (struct qc_done *d = c->fin_head; d != NULL && want < QC_FIN_BATCH_MAX; d = d->fin_next)
        want += d->l->shard_item == shard;
    struct qc_finb *b = malloc(sizeof(*b) + want * sizeof(b->d[0]));
    const char **args = malloc(5 * want * sizeof(*args));
    size_t *lens = malloc(5 * want * sizeof(*lens));
    char(*delays)[24] = malloc(want * sizeof(*delays));

    if (b == NULL || args == NULL || lens == NULL || delays == NULL) {
        struct qc_done *d = c->fin_head;
        c->fin_head = d->fin_next;
        if (c->fin_head == NULL)
            c->fin_tail = NULL;
        c->fin_n--;
        d->fin_next = NULL;
        done_error(d, "out of memory (the work item's lease will expire)");
        goto out;
    }
    /* Take the batch off the list first: the callbacks below may queue completions. */
    c->fin_tail = NULL;
    for (struct qc_done **pp = &c->fin_head; *pp != NULL;) {
        struct qc_done *d = *pp;
        if (d->l->shard_item != shard || n == want) {
            c->fin_tail = d;
            pp = &d->fin_next;
            continue;
        }
        *pp = d->fin_next;
        d->fin_next = NULL;
        c->fin_n--;
        b->d[n] = d;
        snprintf(delays[n], sizeof(delays[n]), "%llu", (unsigned long long)d->delay_ms);
        const char *v[5] = {d->l->item, d->l->token, d->fin ? "fin" : "retry", delays[n],
                            d->temp_reason};
        for (size_t k = 0; k < 5; k++) {
            args[5 * n + k] = v[k];
            lens[5 * n + k] = strlen(v[k]);
        }
        n++;
    }
    b->n = n;
    job_add(c, &b->j, finb_destroy);
    if (qc_eval(c, QS_FINISHN, shard, 5 * n, args, lens, on_finb, b, 0) == 0) {
        c->st.finish_scripts++;
        b = NULL;
    } else {
        job_del(c, &b->j);
        for (size_t i = 0; i < n; i++)
            done_error(b->d[i], "redis: work item not finished (its lease will expire)");
    }
out:
    free(b);
    free(args);
    free(lens);
    free(delays);
}

/* fin_flush sends the waiting completions' FINISHNs: one per home shard. */
static void fin_flush(void *arg)
{
    struct queue_consumer *c = arg;

    c->fin_timer = NULL;
    while (c->fin_head != NULL)
        fin_send(c);
}

/* done_finish_item finishes (|fin|) or reschedules the item of |d| once its record is updated.
 * The FINISH waits for the end of the loop iteration, so that the completions of one iteration
 * finish their items with one FINISHN per home shard: a busy destination's completions all land
 * in one shard. A full batch goes at once. */
static void done_finish_item(struct qc_done *d, bool fin)
{
    struct queue_consumer *c = d->c;

    d->fin = fin;
    d->fin_next = NULL;
    if (c->fin_tail != NULL)
        c->fin_tail->fin_next = d;
    else
        c->fin_head = d;
    c->fin_tail = d;
    c->fin_n++;
    c->st.finish_items++;
    if (c->fin_n >= QC_FIN_BATCH_MAX) {
        if (c->fin_timer != NULL) {
            c->loop.ops->timer_cancel(c->loop.loop, c->fin_timer);
            c->fin_timer = NULL;
        }
        fin_flush(c);
        return;
    }
    if (c->fin_timer == NULL) {
        c->fin_timer = c->loop.ops->timer_add(c->loop.loop, 0, fin_flush, c);
        if (c->fin_timer == NULL)
            fin_flush(c);
    }
}

static void on_update(struct queue_consumer *c, void *ctx, uintptr_t tag, const redisReply *r)
{
    struct qc_done *d = ctx;
    struct queue_consumer_lease *l = d->l;
    char why[QUEUE_REASON_MAX];
    (void)tag;

    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 1) {
        if (r != NULL && r->type == REDIS_REPLY_ERROR)
            r_text(r, why, sizeof(why));
        else
            snprintf(why, sizeof(why), "redis: record update lost");
        done_error(d, why);
        return;
    }
    const redisReply *st = r->element[0];
    if (r_is(st, "stale") && r->elements == 3 && r_str(r->element[1]) && r_str(r->element[2]) &&
        r->element[2]->len < sizeof(l->ver)) {
        /* Another item of this message was completed meanwhile: apply ours to its record. */
        struct queue_record *rec;
        c->st.stale++;
        if (++d->stale > QUEUE_CONSUMER_STALE_MAX) {
            done_error(d, "record kept changing");
            return;
        }
        if (decode_check(l->qid, r->element[1]->str, r->element[1]->len, &rec, why, sizeof(why)) !=
            QUEUE_RECORD_OK) {
            done_error(d, why); /* the next claim quarantines it */
            return;
        }
        queue_record_cleanup(l->rec);
        free(l->rec);
        l->rec = rec;
        memcpy(l->ver, r->element[2]->str, r->element[2]->len);
        l->ver[r->element[2]->len] = '\0';
        if (done_apply(d) < 0)
            done_error(d, "redis: record update not sent");
        return;
    }
    if (r_is(st, "gone")) {
        d->res.status = QUEUE_CONSUMER_DONE_GONE;
        d->res.delivered = d->res.failed = d->res.expired = 0;
        d->res.report_queued = false;
        d->dest_final = true;
        done_finish_item(d, true);
        return;
    }
    if (!r_is(st, "ok") && !r_is(st, "removed")) {
        done_error(d, "unexpected update reply");
        return;
    }
    c->st.delivered += d->res.delivered;
    c->st.failed += d->res.failed;
    c->st.expired += d->res.expired;
    if (d->res.report_queued)
        c->st.reports++;
    if (d->res.failed)
        emit(c, QUEUE_CONSUMER_EV_FAILED, l->qid, l->dest, "permanent failure", d->res.failed);
    if (d->res.expired)
        emit(c, QUEUE_CONSUMER_EV_EXPIRED, l->qid, l->dest, d->temp_reason, d->res.expired);
    if (r_is(st, "removed")) {
        d->res.removed = true;
        c->st.removed++;
    }
    done_finish_item(d, d->dest_final || d->res.removed);
}

/* done_apply applies the outcomes of |d| to its lease's record and sends the update. On failure
 * the record is left as it was. */
static int done_apply(struct qc_done *d)
{
    struct queue_consumer *c = d->c;
    struct queue_consumer_lease *l = d->l;
    struct queue_record *rec = l->rec;
    size_t nr = rec->n_rcpts;
    size_t *omap = malloc((nr ? nr : 1) * sizeof(*omap));
    uint8_t *saved = malloc(nr ? nr : 1);
    struct queue_consumer_report_rcpt *rep = NULL;
    size_t nrep = 0;
    uint32_t saved_attempts = rec->attempts;
    uint8_t *rbuf = NULL, *report = NULL;
    size_t rlen = 0, replen = 0;
    unsigned delivered = 0, failed = 0, expired = 0, pending = 0;
    bool hdrs = false; /* attach the message start to the report item (for a DSN) */
    int rc = -ENOMEM;

    if (omap == NULL || saved == NULL)
        goto out;
    for (size_t i = 0; i < nr; i++) {
        omap[i] = SIZE_MAX;
        saved[i] = (uint8_t)rec->rcpts[i].status;
    }
    for (size_t k = 0; k < d->n; k++)
        if (d->o[k].rcpt < nr)
            omap[d->o[k].rcpt] = k;
    d->temp_reason[0] = '\0';
    for (size_t i = 0; i < nr; i++) {
        struct queue_rcpt *rp = &rec->rcpts[i];
        if (rp->status != QUEUE_RCPT_PENDING || strcmp(rcpt_dest(rp), l->dest) != 0)
            continue;
        size_t k = omap[i];
        if (d->expire || k == SIZE_MAX) {
            pending++;
            if (!d->expire && d->temp_reason[0] == '\0')
                snprintf(d->temp_reason, sizeof(d->temp_reason), "no outcome");
            continue;
        }
        switch (d->o[k].result) {
        case QUEUE_CONSUMER_DELIVERED:
            rp->status = QUEUE_RCPT_DELIVERED;
            delivered++;
            break;
        case QUEUE_CONSUMER_PERMFAIL:
            rp->status = QUEUE_RCPT_FAILED;
            failed++;
            break;
        case QUEUE_CONSUMER_TEMPFAIL:
            pending++;
            if (d->temp_reason[0] == '\0')
                snprintf(d->temp_reason, sizeof(d->temp_reason), "%s", d->reasons[k]);
            break;
        }
    }
    if (!d->expire && rec->attempts < UINT32_MAX)
        rec->attempts++;
    d->delay_ms = 0;
    bool expire_now = false;
    if (pending > 0) {
        expire_now = d->expire;
        if (!expire_now) {
            uint64_t delay = backoff(c, l->tries);
            int64_t deadline = rec->created_ms + (int64_t)c->lifetime_ms;
            if (wall_ms() + (int64_t)delay >= deadline)
                expire_now = true;
            else
                d->delay_ms = delay;
        }
    }
    /* Report entries: recipients this completion failed or expires. */
    rep = calloc(failed + (expire_now ? pending : 0) + 1, sizeof(*rep));
    if (rep == NULL)
        goto restore;
    for (size_t i = 0; i < nr; i++) {
        struct queue_rcpt *rp = &rec->rcpts[i];
        if (strcmp(rcpt_dest(rp), l->dest) != 0 || saved[i] != QUEUE_RCPT_PENDING)
            continue;
        if (rp->status == QUEUE_RCPT_FAILED) {
            rep[nrep].rcpt = (uint32_t)i;
            rep[nrep].status = QUEUE_RCPT_FAILED;
            copy_clean(rep[nrep].reason, sizeof(rep[nrep].reason), d->reasons[omap[i]],
                       strlen(d->reasons[omap[i]]));
            nrep++;
        } else if (rp->status == QUEUE_RCPT_PENDING && expire_now) {
            rp->status = QUEUE_RCPT_EXPIRED;
            expired++;
            rep[nrep].rcpt = (uint32_t)i;
            rep[nrep].status = QUEUE_RCPT_EXPIRED;
            snprintf(rep[nrep].reason, sizeof(rep[nrep].reason), "lifetime exceeded%s%.80s",
                     d->temp_reason[0] ? "; last error: " : "", d->temp_reason);
            nrep++;
        }
    }
    if (expire_now) {
        pending = 0;
        if (d->temp_reason[0] == '\0')
            snprintf(d->temp_reason, sizeof(d->temp_reason), "lifetime exceeded");
    }
    d->dest_final = pending == 0;
    d->all_final = true;
    for (size_t i = 0; i < nr && d->all_final; i++)
        if (rec->rcpts[i].status == QUEUE_RCPT_PENDING)
            d->all_final = false;
    struct queue_record_in in;
    queue_record_in_from(&in, rec);
    rc = queue_record_encode(&in, &rbuf, &rlen);
    if (rc < 0)
        goto restore;
    if (nrep > 0) {
        hdrs = queue_record_wants_dsn(rec);
        rc = report_encode(l->qid, l->dest, wall_ms(), hdrs ? QUEUE_CONSUMER_REPORT_F_HEADERS : 0,
                           rep, nrep, rbuf, rlen, &report, &replen);
        if (rc < 0)
            goto restore;
    }
    const char *args[6] = {l->qid,
                           l->ver,
                           d->all_final ? "" : (const char *)rbuf,
                           report ? (const char *)report : "",
                           d->all_final ? "1" : "0",
                           hdrs ? "1" : "0"};
    size_t lens[6] = {
        strlen(l->qid), strlen(l->ver), d->all_final ? 0 : rlen, report ? replen : 0, 1, 1};
    rc = qc_eval(c, QS_UPDATE, l->shard_msg, 6, args, lens, on_update, d, 0);
    if (rc < 0)
        goto restore;
    memset(&d->res, 0, sizeof(d->res));
    snprintf(d->res.qid, sizeof(d->res.qid), "%s", l->qid);
    snprintf(d->res.dest, sizeof(d->res.dest), "%s", l->dest);
    d->res.delivered = delivered;
    d->res.failed = failed;
    d->res.expired = expired;
    d->res.pending = pending;
    d->res.report_queued = nrep > 0;
    goto out;
restore:
    for (size_t i = 0; i < nr; i++)
        rec->rcpts[i].status = (enum queue_rcpt_status)saved[i];
    rec->attempts = saved_attempts;
out:
    if (rbuf)
        explicit_bzero(rbuf, rlen);
    free(rbuf);
    free(report);
    free(rep);
    free(omap);
    free(saved);
    return rc;
}

static int done_start(struct queue_consumer_lease *l, const struct queue_consumer_outcome *o,
                      size_t n, bool expire, struct qc_claim *parent,
                      void (*cb)(void *arg, const struct queue_consumer_done_result *r), void *arg)
{
    struct queue_consumer *c = l->c;
    struct qc_done *d = calloc(1, sizeof(*d));
    int rc;

    if (d == NULL)
        return -ENOMEM;
    d->c = c;
    d->l = l;
    d->expire = expire;
    d->parent = parent;
    d->cb = cb;
    d->arg = arg;
    d->n = n;
    if (n > 0) {
        d->o = calloc(n, sizeof(*d->o));
        d->reasons = calloc(n, sizeof(*d->reasons));
        if (d->o == NULL || d->reasons == NULL) {
            rc = -ENOMEM;
            goto err;
        }
        for (size_t i = 0; i < n; i++) {
            d->o[i] = o[i];
            copy_clean(d->reasons[i], QUEUE_REASON_MAX, o[i].reason,
                       o[i].reason ? strlen(o[i].reason) : 0);
            d->o[i].reason = d->reasons[i];
        }
    }
    rc = done_apply(d);
    if (rc < 0)
        goto err;
    job_add(c, &d->j, done_destroy);
    return 0;
err:
    free(d->o);
    free(d->reasons);
    free(d);
    return rc;
}

int queue_consumer_done(struct queue_consumer_lease *l, const struct queue_consumer_outcome *o,
                        size_t n, void (*cb)(void *arg, const struct queue_consumer_done_result *r),
                        void *arg)
{
    if (l == NULL || (n > 0 && o == NULL) || n > CMTP_RCPT_MAX_HARD)
        return -EINVAL;
    if (l->busy)
        return -EBUSY;
    for (size_t i = 0; i < n; i++) {
        if (o[i].rcpt >= l->rec->n_rcpts ||
            strcmp(rcpt_dest(&l->rec->rcpts[o[i].rcpt]), l->dest) != 0 ||
            (o[i].result != QUEUE_CONSUMER_DELIVERED && o[i].result != QUEUE_CONSUMER_TEMPFAIL &&
             o[i].result != QUEUE_CONSUMER_PERMFAIL))
            return -EINVAL;
    }
    if (l->c->rc.state != QUEUE_CONNECTED)
        return -ENOTCONN;
    return done_start(l, o, n, false, NULL, cb, arg);
}

/* ---- renew, return, abandon ---- */

struct qc_simple {
    struct qc_job j;
    struct queue_consumer_lease *l; /* renew only */
    void (*cb)(void *arg, int err);
    void *arg;
};

static void simple_destroy(struct qc_job *j)
{
    struct qc_simple *s = (struct qc_simple *)j;
    if (s->l != NULL) {
        s->l->busy = false;
        if (s->l->abandoned)
            lease_free(s->l);
    }
    free(s);
}

static void simple_end(struct queue_consumer *c, struct qc_simple *s, int err)
{
    void (*cb)(void *, int) = s->cb;
    void *arg = s->arg;
    bool abandoned = s->l != NULL && s->l->abandoned;
    job_del(c, &s->j);
    simple_destroy(&s->j);
    if (cb != NULL && !abandoned)
        cb(arg, err);
}

static void on_renew(struct queue_consumer *c, void *ctx, uintptr_t tag, const redisReply *r)
{
    struct qc_simple *s = ctx;
    long long at;
    (void)tag;
    if (r != NULL && r->type == REDIS_REPLY_NIL) {
        simple_end(c, s, -ESTALE);
    } else if (r_ll(r, &at)) {
        s->l->expires_ms = at;
        simple_end(c, s, 0);
    } else {
        simple_end(c, s, -EIO);
    }
}

static struct qc_simple *simple_new(struct queue_consumer *c, void (*cb)(void *, int), void *arg)
{
    struct qc_simple *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->cb = cb;
    s->arg = arg;
    (void)c;
    return s;
}

int queue_consumer_renew(struct queue_consumer_lease *l, void (*cb)(void *arg, int err), void *arg)
{
    struct queue_consumer *c;
    char ms[16];
    struct qc_simple *s;
    int rc;

    if (l == NULL)
        return -EINVAL;
    if (l->busy)
        return -EBUSY;
    c = l->c;
    if (c->rc.state != QUEUE_CONNECTED)
        return -ENOTCONN;
    s = simple_new(c, cb, arg);
    if (s == NULL)
        return -ENOMEM;
    snprintf(ms, sizeof(ms), "%u", c->lease_ms);
    const char *args[3] = {l->item, l->token, ms};
    rc = qc_evals(c, QS_RENEW, l->shard_item, 3, args, on_renew, s, 0);
    if (rc < 0) {
        free(s);
        return rc;
    }
    s->l = l;
    l->busy = true;
    job_add(c, &s->j, simple_destroy);
    return 0;
}

static void on_returned(struct queue_consumer *c, void *ctx, uintptr_t tag, const redisReply *r)
{
    (void)tag;
    if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r_is(r->element[0], "ok"))
        simple_end(c, ctx, 0);
    else if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 2)
        simple_end(c, ctx, -ESTALE);
    else
        simple_end(c, ctx, -EIO);
}

int queue_consumer_lease_return(struct queue_consumer_lease *l, void (*cb)(void *arg, int err),
                                void *arg)
{
    struct queue_consumer *c;
    struct qc_simple *s;
    int rc;

    if (l == NULL)
        return -EINVAL;
    if (l->busy)
        return -EBUSY;
    c = l->c;
    if (c->rc.state != QUEUE_CONNECTED)
        return -ENOTCONN;
    s = simple_new(c, cb, arg);
    if (s == NULL)
        return -ENOMEM;
    const char *args[3] = {l->item, l->token, "release"};
    rc = qc_evals(c, QS_FINISH, l->shard_item, 3, args, on_returned, s, 0);
    if (rc < 0) {
        free(s);
        return rc;
    }
    c->busy_hint[l->shard_item] = 1; /* due again now */
    job_add(c, &s->j, simple_destroy);
    lease_free(l); /* the command carries copies of what it needs */
    return 0;
}

void queue_consumer_lease_abandon(struct queue_consumer_lease *l)
{
    if (l == NULL)
        return;
    if (l->busy) {
        l->abandoned = true; /* the renewal in flight frees it */
        return;
    }
    lease_free(l);
}

/* ---- body ---- */

struct queue_consumer_body {
    struct qc_job j;
    struct queue_consumer *c;
    char key[QUEUE_KEY_MAX];
    size_t klen;
    uint64_t size, off;
    uint32_t index;
    bool busy, closed;
    const uint8_t *pre; /* the lease's first chunk, read with its record (NULL: none) */
    size_t pre_len;
    void *timer; /* hands |pre| over from the loop */
    void (*cb)(void *arg, int err, const uint8_t *data, size_t len, bool last);
    void *arg;
};

static void body_destroy(struct qc_job *j)
{
    struct queue_consumer_body *b = (struct queue_consumer_body *)j;
    if (b->timer != NULL)
        b->c->loop.ops->timer_cancel(b->c->loop.loop, b->timer);
    free(b);
}

struct queue_consumer_body *queue_consumer_body_open(const struct queue_consumer_lease *l)
{
    struct queue_consumer_body *b = calloc(1, sizeof(*b));
    int kl;

    if (b == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    kl = queue_key_format(b->key, sizeof(b->key), l->c->prefix, l->shard_msg, "body", l->qid,
                          strlen(l->qid));
    if (kl < 0) {
        free(b);
        errno = -kl;
        return NULL;
    }
    b->klen = (size_t)kl;
    b->c = l->c;
    b->size = l->rec->env.size;
    b->pre = l->pre;
    b->pre_len = l->pre_len;
    job_add(b->c, &b->j, body_destroy);
    return b;
}

/* body_chunk checks and hands over one chunk (|r| NULL: no reply; |data| the octets). */
static void body_chunk(struct queue_consumer_body *b, bool nil, const uint8_t *data, size_t len)
{
    if (nil) {
        b->cb(b->arg, -ENOENT, NULL, 0, false);
        return;
    }
    if (data == NULL || len == 0 || len > b->size - b->off) {
        b->cb(b->arg, -EIO, NULL, 0, false);
        return;
    }
    b->off += len;
    b->index++;
    b->cb(b->arg, 0, data, len, b->off == b->size);
}

static void on_body(struct queue_consumer *c, void *ctx, uintptr_t tag, const redisReply *r)
{
    struct queue_consumer_body *b = ctx;
    (void)tag;

    b->busy = false;
    if (b->closed) {
        job_del(c, &b->j);
        free(b);
        return;
    }
    body_chunk(b, r != NULL && r->type == REDIS_REPLY_NIL,
               r_str(r) ? (const uint8_t *)r->str : NULL, r_str(r) ? r->len : 0);
}

static void on_body_pre(void *arg)
{
    struct queue_consumer_body *b = arg;
    b->timer = NULL;
    b->busy = false;
    body_chunk(b, false, b->pre, b->pre_len);
}

int queue_consumer_body_next(struct queue_consumer_body *b,
                             void (*cb)(void *arg, int err, const uint8_t *data, size_t len,
                                        bool last),
                             void *arg)
{
    char idx[16];
    if (b == NULL || cb == NULL || b->closed)
        return -EINVAL;
    if (b->busy)
        return -EBUSY;
    if (b->off >= b->size)
        return -ENODATA;
    if (b->index == 0 && b->pre != NULL) {
        /* The first chunk came with the record: no read, but still from the loop. */
        b->timer = b->c->loop.ops->timer_add(b->c->loop.loop, 0, on_body_pre, b);
        if (b->timer == NULL)
            return -ENOMEM;
        b->cb = cb;
        b->arg = arg;
        b->busy = true;
        return 0;
    }
    if (b->c->rc.state != QUEUE_CONNECTED)
        return -ENOTCONN;
    snprintf(idx, sizeof(idx), "%u", b->index);
    const char *argv[3] = {"LINDEX", b->key, idx};
    size_t lens[3] = {6, b->klen, strlen(idx)};
    int rc = qc_cmd_argv(b->c, 3, argv, lens, on_body, b, 0);
    if (rc < 0)
        return rc;
    b->cb = cb;
    b->arg = arg;
    b->busy = true;
    return 0;
}

void queue_consumer_body_close(struct queue_consumer_body *b)
{
    if (b == NULL)
        return;
    if (b->busy && b->timer == NULL) {
        b->closed = true; /* the read in flight frees it */
        return;
    }
    job_del(b->c, &b->j);
    body_destroy(&b->j);
}

/* ---- report take and ack ---- */

struct qc_rtake {
    struct qc_job j;
    unsigned start, visited;
    void (*cb)(void *arg, int err, unsigned shard, const uint8_t *data, size_t len);
    void *arg;
};

static void free_job(struct qc_job *j)
{
    free(j);
}

static int rtake_send(struct queue_consumer *c, struct qc_rtake *t);

static void on_rtake(struct queue_consumer *c, void *ctx, uintptr_t tag, const redisReply *r)
{
    struct qc_rtake *t = ctx;
    unsigned shard = (unsigned)tag;
    int err;

    if (r != NULL && r->type == REDIS_REPLY_NIL) {
        if (t->visited >= c->shards)
            err = -ENOENT;
        else if (rtake_send(c, t) == 0)
            return;
        else
            err = -EIO;
    } else {
        err = r_str(r) ? 0 : -EIO;
    }
    if (err == 0)
        c->report_cursor = shard; /* start there next time: it may hold more */
    job_del(c, &t->j);
    if (t->cb)
        t->cb(t->arg, err, shard, err == 0 ? (const uint8_t *)r->str : NULL, err == 0 ? r->len : 0);
    free(t);
}

static int rtake_send(struct queue_consumer *c, struct qc_rtake *t)
{
    char ms[16];
    unsigned shard = (t->start + t->visited) % c->shards;
    snprintf(ms, sizeof(ms), "%u", c->lease_ms);
    const char *args[1] = {ms};
    t->visited++;
    return qc_evals(c, QS_RTAKE, shard, 1, args, on_rtake, t, shard);
}

int queue_consumer_report_take(struct queue_consumer *c,
                               void (*cb)(void *arg, int err, unsigned shard, const uint8_t *data,
                                          size_t len),
                               void *arg)
{
    struct qc_rtake *t;
    int rc;

    if (c == NULL || cb == NULL)
        return -EINVAL;
    if (c->rc.state != QUEUE_CONNECTED)
        return -ENOTCONN;
    if (c->inflight >= c->inflight_max)
        return -EAGAIN;
    t = calloc(1, sizeof(*t));
    if (t == NULL)
        return -ENOMEM;
    t->start = c->report_cursor % c->shards;
    t->cb = cb;
    t->arg = arg;
    rc = rtake_send(c, t);
    if (rc < 0) {
        free(t);
        return rc;
    }
    job_add(c, &t->j, free_job);
    return 0;
}

static void on_rack(struct queue_consumer *c, void *ctx, uintptr_t tag, const redisReply *r)
{
    struct qc_simple *s = ctx;
    (void)tag;
    if (r != NULL && r->type == REDIS_REPLY_INTEGER)
        simple_end(c, s, r->integer > 0 ? 0 : -ENOENT);
    else
        simple_end(c, s, -EIO);
}

int queue_consumer_report_ack(struct queue_consumer *c, unsigned shard, const uint8_t *data,
                              size_t len, void (*cb)(void *arg, int err), void *arg)
{
    char key[QUEUE_KEY_MAX];
    struct qc_simple *s;
    int kl, rc;

    if (c == NULL || data == NULL || len == 0 || shard >= c->shards)
        return -EINVAL;
    if (c->rc.state != QUEUE_CONNECTED)
        return -ENOTCONN;
    if (c->inflight >= c->inflight_max)
        return -EAGAIN;
    kl = queue_key_format(key, sizeof(key), c->prefix, shard, "rbusy", NULL, 0);
    if (kl < 0)
        return kl;
    s = simple_new(c, cb, arg);
    if (s == NULL)
        return -ENOMEM;
    const char *argv[3] = {"ZREM", key, (const char *)data};
    size_t lens[3] = {4, (size_t)kl, len};
    rc = qc_cmd_argv(c, 3, argv, lens, on_rack, s, 0);
    if (rc < 0) {
        free(s);
        return rc;
    }
    job_add(c, &s->j, simple_destroy);
    return 0;
}

/* ---- admin: summary ---- */

struct qc_summary {
    struct qc_job j;
    unsigned pending;
    bool failed;
    struct queue_consumer_dest_summary *d;
    size_t n;
    bool trunc;
    uint64_t quar;
    void (*cb)(void *arg, int err, const struct queue_consumer_summary *s);
    void *arg;
};

static void summary_destroy(struct qc_job *j)
{
    struct qc_summary *s = (struct qc_summary *)j;
    free(s->d);
    free(s);
}

static int cmp_dest_summary(const void *a, const void *b)
{
    return strcmp(((const struct queue_consumer_dest_summary *)a)->dest,
                  ((const struct queue_consumer_dest_summary *)b)->dest);
}

static void min_nonzero(int64_t *into, int64_t v)
{
    if (v > 0 && (*into == 0 || v < *into))
        *into = v;
}

static void summary_merge(struct qc_summary *s, const redisReply *r)
{
    long long v;

    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
        r->element[2]->type != REDIS_REPLY_ARRAY) {
        s->failed = true;
        return;
    }
    if (r_ll(r->element[0], &v) && v)
        s->trunc = true;
    if (r_ll(r->element[1], &v) && v > 0)
        s->quar += (uint64_t)v;
    for (size_t i = 0; i < r->element[2]->elements; i++) {
        const redisReply *e = r->element[2]->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 7 || !r_str(e->element[0]) ||
            e->element[0]->len > CMTP_DOMAIN_MAX || !r_str(e->element[5]))
            continue;
        struct queue_consumer_dest_summary *ds = NULL;
        for (size_t k = 0; k < s->n; k++) {
            if (strlen(s->d[k].dest) == e->element[0]->len &&
                memcmp(s->d[k].dest, e->element[0]->str, e->element[0]->len) == 0) {
                ds = &s->d[k];
                break;
            }
        }
        if (ds == NULL) {
            if (s->n >= QUEUE_CONSUMER_SUMMARY_MAX) {
                s->trunc = true;
                continue;
            }
            ds = &s->d[s->n++];
            memset(ds, 0, sizeof(*ds));
            copy_clean(ds->dest, sizeof(ds->dest), e->element[0]->str, e->element[0]->len);
        }
        ds->scheduled += r_u32(e->element[1]);
        ds->leased += r_u32(e->element[2]);
        ds->held += r_u32(e->element[3]);
        ds->dead += r_u32(e->element[4]);
        char oldest[CMTP_QID_MAX + 1];
        copy_clean(oldest, sizeof(oldest), e->element[5]->str, e->element[5]->len);
        min_nonzero(&ds->oldest_ms, qid_time_ms(oldest));
        if (r_ll(e->element[6], &v))
            min_nonzero(&ds->next_attempt_ms, v);
    }
}

static void on_summary(struct queue_consumer *c, void *ctx, uintptr_t tag, const redisReply *r)
{
    struct qc_summary *s = ctx;
    (void)tag;
    summary_merge(s, r);
    if (--s->pending > 0)
        return;
    job_del(c, &s->j);
    qsort(s->d, s->n, sizeof(*s->d), cmp_dest_summary);
    struct queue_consumer_summary sum = {
        .dests = s->d,
        .n_dests = s->n,
        .quarantined = s->quar,
        .truncated = s->trunc,
    };
    s->cb(s->arg, s->failed ? -EIO : 0, s->failed ? NULL : &sum);
    summary_destroy(&s->j);
}

int queue_consumer_summary(struct queue_consumer *c,
                           void (*cb)(void *arg, int err, const struct queue_consumer_summary *s),
                           void *arg)
{
    struct qc_summary *s;
    char scan[16];

    if (c == NULL || cb == NULL)
        return -EINVAL;
    if (c->rc.state != QUEUE_CONNECTED)
        return -ENOTCONN;
    if (c->inflight >= c->inflight_max)
        return -EAGAIN;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    s->d = calloc(QUEUE_CONSUMER_SUMMARY_MAX, sizeof(*s->d));
    if (s->d == NULL) {
        free(s);
        return -ENOMEM;
    }
    s->cb = cb;
    s->arg = arg;
    snprintf(scan, sizeof(scan), "%u", QUEUE_CONSUMER_SCAN_MAX);
    const char *args[1] = {scan};
    for (unsigned k = 0; k < c->shards; k++) {
        if (qc_evals(c, QS_SUMMARY, k, 1, args, on_summary, s, k) == 0)
            s->pending++;
        else
            s->failed = true;
    }
    if (s->pending == 0) {
        summary_destroy(&s->j);
        return -EIO;
    }
    job_add(c, &s->j, summary_destroy);
    return 0;
}

/* ---- admin: list ---- */

static const char *const state_keys[] = {"sched", "leases", "held", "dead", "quarantine"};

struct qc_list {
    struct qc_job j;
    unsigned pending;
    bool failed, trunc;
    enum queue_consumer_state_kind state;
    struct queue_consumer_entry *e;
    size_t n, limit;
    void (*cb)(void *arg, int err, const struct queue_consumer_entry *e, size_t n, bool truncated);
    void *arg;
};

static void list_destroy(struct qc_job *j)
{
    struct qc_list *l = (struct qc_list *)j;
    free(l->e);
    free(l);
}

static int cmp_entry(const void *a, const void *b)
{
    const struct queue_consumer_entry *x = a, *y = b;
    if (x->at_ms != y->at_ms)
        return x->at_ms < y->at_ms ? -1 : 1;
    int r = strcmp(x->qid, y->qid);
    return r ? r : strcmp(x->dest, y->dest);
}

static void list_add(struct queue_consumer *c, struct qc_list *l, const redisReply *e)
{
    struct queue_consumer_entry ent;
    unsigned smsg;
    long long at;

    if (e->type != REDIS_REPLY_ARRAY || e->elements != 3 || !r_str(e->element[0]) ||
        !r_ll(e->element[1], &at) ||
        !split_item(c, e->element[0]->str, e->element[0]->len, ent.qid, ent.dest, &smsg))
        return;
    ent.state = l->state;
    ent.at_ms = at;
    r_text(e->element[2], ent.info, sizeof(ent.info));
    if (l->state == QUEUE_CONSUMER_LEASED) {
        char *hash = strchr(ent.info, '#'); /* token = node#random#n: show the node */
        if (hash)
            *hash = '\0';
    }
    if (l->n < l->limit) {
        l->e[l->n++] = ent;
        return;
    }
    l->trunc = true;
    size_t worst = 0;
    for (size_t i = 1; i < l->n; i++)
        if (cmp_entry(&l->e[i], &l->e[worst]) > 0)
            worst = i;
    if (cmp_entry(&ent, &l->e[worst]) < 0)
        l->e[worst] = ent;
}

static void on_list(struct queue_consumer *c, void *ctx, uintptr_t tag, const redisReply *r)
{
    struct qc_list *l = ctx;
    long long t;
    (void)tag;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[1]->type != REDIS_REPLY_ARRAY) {
        l->failed = true;
    } else {
        if (r_ll(r->element[0], &t) && t)
            l->trunc = true;
        for (size_t i = 0; i < r->element[1]->elements; i++)
            list_add(c, l, r->element[1]->element[i]);
    }
    if (--l->pending > 0)
        return;
    job_del(c, &l->j);
    qsort(l->e, l->n, sizeof(*l->e), cmp_entry);
    l->cb(l->arg, l->failed ? -EIO : 0, l->e, l->failed ? 0 : l->n, l->trunc);
    list_destroy(&l->j);
}

int queue_consumer_list(struct queue_consumer *c, const struct queue_consumer_filter *f,
                        void (*cb)(void *arg, int err, const struct queue_consumer_entry *e,
                                   size_t n, bool truncated),
                        void *arg)
{
    struct qc_list *l;
    char lim[16], scan[16];
    const char *want = "*";

    if (c == NULL || f == NULL || cb == NULL || (unsigned)f->state > QUEUE_CONSUMER_QUARANTINED ||
        f->limit > QUEUE_CONSUMER_LIST_MAX)
        return -EINVAL;
    if (f->dest != NULL) {
        if (strlen(f->dest) > CMTP_DOMAIN_MAX || strchr(f->dest, '/') != NULL ||
            (f->state == QUEUE_CONSUMER_QUARANTINED && f->dest[0] != '\0'))
            return -EINVAL;
        want = f->dest;
    }
    if (c->rc.state != QUEUE_CONNECTED)
        return -ENOTCONN;
    if (c->inflight >= c->inflight_max)
        return -EAGAIN;
    l = calloc(1, sizeof(*l));
    if (l == NULL)
        return -ENOMEM;
    l->limit = f->limit ? f->limit : QUEUE_CONSUMER_LIST_MAX;
    l->state = f->state;
    l->e = calloc(l->limit, sizeof(*l->e));
    if (l->e == NULL) {
        free(l);
        return -ENOMEM;
    }
    l->cb = cb;
    l->arg = arg;
    snprintf(lim, sizeof(lim), "%zu", l->limit);
    snprintf(scan, sizeof(scan), "%u", QUEUE_CONSUMER_SCAN_MAX);
    const char *args[4] = {state_keys[f->state], want, lim, scan};
    bool one = f->dest != NULL && f->dest[0] != '\0';
    unsigned home = one ? queue_consumer_item_shard(f->dest, c->shards) : 0;
    for (unsigned k = 0; k < c->shards; k++) {
        if (one && k != home)
            continue;
        if (qc_evals(c, QS_LIST, k, 4, args, on_list, l, k) == 0)
            l->pending++;
        else
            l->failed = true;
    }
    if (l->pending == 0) {
        list_destroy(&l->j);
        return -EIO;
    }
    job_add(c, &l->j, list_destroy);
    return 0;
}

/* ---- admin: one message (show, delete, hold, release, retry) ---- */

enum qc_mode { QM_SHOW = 0, QM_DELETE, QM_HOLD, QM_RELEASE, QM_RETRY };
static const char *const mode_names[] = {"show", "delete", "hold", "release", "retry"};

struct qc_msg {
    struct qc_job j;
    enum qc_mode mode;
    char qid[CMTP_QID_MAX + 1];
    unsigned shard;
    int stage;
    unsigned pending;
    bool failed, found;
    unsigned count;
    struct queue_record *rec;
    size_t rec_len;
    bool quarantined;
    char qreason[QUEUE_REASON_MAX];
    const char **dests;
    size_t nd;
    struct queue_consumer_item_state *items;
    size_t n_items, cap_items;
    void (*cb_show)(void *arg, int err, const struct queue_consumer_show_result *r);
    void (*cb_n)(void *arg, int err, unsigned n);
    void *arg;
};

static void msg_destroy(struct qc_job *j)
{
    struct qc_msg *m = (struct qc_msg *)j;
    if (m->rec) {
        queue_record_cleanup(m->rec);
        free(m->rec);
    }
    free(m->dests);
    free(m->items);
    free(m);
}

static void msg_info(struct qc_msg *m, const redisReply *r)
{
    char why[QUEUE_REASON_MAX];
    const redisReply *rec;

    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 5) {
        m->failed = true;
        return;
    }
    rec = r_str(r->element[0]) ? r->element[0] : r_str(r->element[1]) ? r->element[1] : NULL;
    if (r_str(r->element[3])) {
        m->quarantined = true;
        m->found = true;
        r_text(r->element[3], m->qreason, sizeof(m->qreason));
    }
    if (rec == NULL)
        return;
    m->found = true;
    m->rec_len = rec->len;
    if (decode_check(m->qid, rec->str, rec->len, &m->rec, why, sizeof(why)) != QUEUE_RECORD_OK)
        m->rec = NULL;
}

static void msg_items(struct qc_msg *m, const redisReply *r)
{
    long long v;

    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        m->failed = true;
        return;
    }
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        struct queue_consumer_item_state st;
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 11 || !r_str(e->element[0]))
            continue;
        memset(&st, 0, sizeof(st));
        const char *x = e->element[0]->str;
        size_t xl = e->element[0]->len;
        const char *slash = memchr(x, '/', xl);
        if (slash != NULL) {
            size_t dl = xl - (size_t)(slash - x) - 1;
            if (dl > CMTP_DOMAIN_MAX)
                continue;
            memcpy(st.dest, slash + 1, dl);
            st.dest[dl] = '\0';
        }
        m->found = true;
        if (r_ll(e->element[10], &v) && v > 0)
            m->count++;
        if (r_ll(e->element[2], &v)) {
            st.state = QUEUE_CONSUMER_LEASED;
            st.at_ms = v;
            r_text(e->element[3], st.node, sizeof(st.node));
            char *hash = strchr(st.node, '#');
            if (hash)
                *hash = '\0';
        } else if (r_ll(e->element[5], &v)) {
            st.state = QUEUE_CONSUMER_DEAD;
            st.at_ms = v;
        } else if (r_ll(e->element[4], &v)) {
            st.state = QUEUE_CONSUMER_HELD;
            st.at_ms = v;
        } else if (r_ll(e->element[1], &v)) {
            st.state = QUEUE_CONSUMER_SCHEDULED;
            st.at_ms = v;
        }
        st.tries = r_u32(e->element[6]);
        st.crashes = r_u32(e->element[7]);
        if (st.state == QUEUE_CONSUMER_DEAD && r_str(e->element[9]))
            r_text(e->element[9], st.last_error, sizeof(st.last_error));
        else
            r_text(e->element[8], st.last_error, sizeof(st.last_error));
        if (m->n_items == m->cap_items) {
            size_t cap = m->cap_items ? m->cap_items * 2 : 4;
            struct queue_consumer_item_state *ni = realloc(m->items, cap * sizeof(*ni));
            if (ni == NULL) {
                m->failed = true;
                return;
            }
            m->items = ni;
            m->cap_items = cap;
        }
        m->items[m->n_items++] = st;
    }
}

static void msg_finish(struct queue_consumer *c, struct qc_msg *m, int err)
{
    job_del(c, &m->j);
    if (m->mode == QM_SHOW) {
        struct queue_consumer_show_result res = {
            .qid = m->qid,
            .record = m->rec,
            .record_len = m->rec_len,
            .quarantined = m->quarantined,
            .items = m->items,
            .n_items = m->n_items,
        };
        memcpy(res.quarantine_reason, m->qreason, sizeof(res.quarantine_reason));
        m->cb_show(m->arg, err, err ? NULL : &res);
    } else if (m->cb_n != NULL) {
        m->cb_n(m->arg, err, err ? 0 : m->count);
    }
    msg_destroy(&m->j);
}

static void on_msg(struct queue_consumer *c, void *ctx, uintptr_t tag, const redisReply *r);

static void msg_advance(struct queue_consumer *c, struct qc_msg *m)
{
    if (m->failed) {
        msg_finish(c, m, -EIO);
        return;
    }
    if (m->stage == 1) {
        if (!m->found) {
            msg_finish(c, m, -ENOENT);
            return;
        }
        m->stage = 2;
        if (m->rec != NULL) {
            m->dests = dest_list(m->rec, false, &m->nd);
            if (m->nd == SIZE_MAX) {
                m->nd = 0;
                msg_finish(c, m, -ENOMEM);
                return;
            }
            for (unsigned h = 0; h < c->shards; h++) {
                int rc = qc_items_eval(c, QS_IADMIN, h, mode_names[m->mode], m->qid, m->dests,
                                       m->nd, on_msg, m, 1);
                if (rc > 0)
                    m->pending++;
                else if (rc < 0)
                    m->failed = true;
            }
            if (m->pending > 0)
                return;
            if (m->failed) {
                msg_finish(c, m, -EIO);
                return;
            }
        }
    }
    if (m->stage == 2 && m->mode == QM_DELETE) {
        const char *args[1] = {m->qid};
        m->stage = 3;
        int rc = qc_evals(c, QS_DELMSG, m->shard, 1, args, on_msg, m, 2);
        if (rc == 0) {
            m->pending = 1;
            return;
        }
        msg_finish(c, m, -EIO);
        return;
    }
    msg_finish(c, m, 0);
}

static void on_msg(struct queue_consumer *c, void *ctx, uintptr_t tag, const redisReply *r)
{
    struct qc_msg *m = ctx;
    long long v;

    if (tag == 0)
        msg_info(m, r);
    else if (tag == 1)
        msg_items(m, r);
    else if (r_ll(r, &v) && v >= 0)
        m->count += (unsigned)v;
    else
        m->failed = true;
    if (--m->pending == 0)
        msg_advance(c, m);
}

static int msg_start(struct queue_consumer *c, const char *qid, enum qc_mode mode,
                     void (*cb_show)(void *, int, const struct queue_consumer_show_result *),
                     void (*cb_n)(void *, int, unsigned), void *arg)
{
    struct qc_msg *m;
    unsigned shard;
    int rc;

    if (c == NULL || qid == NULL || queue_qid_shard(qid, &shard) < 0 || shard >= c->shards ||
        strchr(qid, '/') != NULL)
        return -EINVAL;
    if (c->rc.state != QUEUE_CONNECTED)
        return -ENOTCONN;
    if (c->inflight >= c->inflight_max)
        return -EAGAIN;
    m = calloc(1, sizeof(*m));
    if (m == NULL)
        return -ENOMEM;
    snprintf(m->qid, sizeof(m->qid), "%s", qid);
    m->shard = shard;
    m->mode = mode;
    m->stage = 1;
    m->cb_show = cb_show;
    m->cb_n = cb_n;
    m->arg = arg;
    if (mode != QM_SHOW)
        c->swept = false; /* items may be due now anywhere: the next claim asks every shard */
    const char *a1[1] = {qid};
    const char *a2[2] = {mode_names[mode], qid};
    rc = qc_evals(c, QS_INFO, shard, 1, a1, on_msg, m, 0);
    if (rc < 0) {
        free(m);
        return rc;
    }
    m->pending = 1;
    if (qc_evals(c, QS_IADMIN, shard, 2, a2, on_msg, m, 1) == 0)
        m->pending++;
    else
        m->failed = true;
    job_add(c, &m->j, msg_destroy);
    return 0;
}

int queue_consumer_show(struct queue_consumer *c, const char *qid,
                        void (*cb)(void *arg, int err, const struct queue_consumer_show_result *r),
                        void *arg)
{
    if (cb == NULL)
        return -EINVAL;
    return msg_start(c, qid, QM_SHOW, cb, NULL, arg);
}

int queue_consumer_delete(struct queue_consumer *c, const char *qid,
                          void (*cb)(void *arg, int err, unsigned n), void *arg)
{
    return msg_start(c, qid, QM_DELETE, NULL, cb, arg);
}

int queue_consumer_hold(struct queue_consumer *c, const char *qid,
                        void (*cb)(void *arg, int err, unsigned n), void *arg)
{
    return msg_start(c, qid, QM_HOLD, NULL, cb, arg);
}

int queue_consumer_release(struct queue_consumer *c, const char *qid,
                           void (*cb)(void *arg, int err, unsigned n), void *arg)
{
    return msg_start(c, qid, QM_RELEASE, NULL, cb, arg);
}

/* ---- admin: bulk (retry all, flush) ---- */

struct qc_bulk {
    struct qc_job j;
    unsigned shard, rounds;
    bool revive;
    int phase; /* 0: revive the dead, 1: flush */
    unsigned count;
    void (*cb)(void *arg, int err, unsigned n);
    void *arg;
};

static void on_bulk(struct queue_consumer *c, void *ctx, uintptr_t tag, const redisReply *r);

static int bulk_send(struct queue_consumer *c, struct qc_bulk *b)
{
    char lim[16];
    snprintf(lim, sizeof(lim), "%u", QC_BULK_LIMIT);
    const char *args[2] = {b->phase == 0 ? "revive" : "flush", lim};
    return qc_evals(c, QS_BULK, b->shard, 2, args, on_bulk, b, 0);
}

static void on_bulk(struct queue_consumer *c, void *ctx, uintptr_t tag, const redisReply *r)
{
    struct qc_bulk *b = ctx;
    long long n;
    int err = 0;
    (void)tag;

    if (r == NULL || r->type != REDIS_REPLY_INTEGER || !r_ll(r, &n) || n < 0) {
        err = -EIO;
        goto done;
    }
    b->count += (unsigned)n;
    if ((unsigned long long)n >= QC_BULK_LIMIT && ++b->rounds < QC_BULK_ROUNDS) {
        /* more of the same */
    } else if (b->phase == 0) {
        b->phase = 1;
        b->rounds = 0;
    } else {
        b->shard++;
        b->phase = b->revive ? 0 : 1;
        b->rounds = 0;
        if (b->shard >= c->shards)
            goto done;
    }
    if (bulk_send(c, b) == 0)
        return;
    err = -EIO;
done:
    job_del(c, &b->j);
    if (b->cb)
        b->cb(b->arg, err, err ? 0 : b->count);
    free(b);
}

static int bulk_start(struct queue_consumer *c, bool revive, void (*cb)(void *, int, unsigned),
                      void *arg)
{
    struct qc_bulk *b;
    int rc;

    if (c == NULL)
        return -EINVAL;
    if (c->rc.state != QUEUE_CONNECTED)
        return -ENOTCONN;
    if (c->inflight >= c->inflight_max)
        return -EAGAIN;
    b = calloc(1, sizeof(*b));
    if (b == NULL)
        return -ENOMEM;
    c->swept = false; /* items may be due now anywhere: the next claim asks every shard */
    b->revive = revive;
    b->phase = revive ? 0 : 1;
    b->cb = cb;
    b->arg = arg;
    rc = bulk_send(c, b);
    if (rc < 0) {
        free(b);
        return rc;
    }
    job_add(c, &b->j, free_job);
    return 0;
}

int queue_consumer_retry(struct queue_consumer *c, const char *qid,
                         void (*cb)(void *arg, int err, unsigned n), void *arg)
{
    if (qid == NULL)
        return bulk_start(c, true, cb, arg);
    return msg_start(c, qid, QM_RETRY, NULL, cb, arg);
}

int queue_consumer_flush(struct queue_consumer *c, void (*cb)(void *arg, int err, unsigned n),
                         void *arg)
{
    return bulk_start(c, false, cb, arg);
}

/* ---- lifecycle ---- */

struct queue_consumer *queue_consumer_new(const struct queue_consumer_config *cfg,
                                          const struct queue_loop *loop, char *err, size_t errlen)
{
    struct queue_consumer *c;
    char dummy[1];

    if (err == NULL || errlen == 0) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    err[0] = '\0';
    if (cfg == NULL || loop == NULL || loop->ops == NULL) {
        snprintf(err, errlen, "missing configuration or loop");
        return NULL;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->loop = *loop;
    const char *prefix = cfg->key_prefix ? cfg->key_prefix : QUEUE_PREFIX_DEFAULT;
    if (!queue_conn_name_ok(prefix, QUEUE_PREFIX_MAX)) {
        snprintf(err, errlen, "bad key prefix");
        goto err;
    }
    snprintf(c->prefix, sizeof(c->prefix), "%s", prefix);
    const char *node = cfg->node_id ? cfg->node_id : "node";
    if (!queue_conn_name_ok(node, QUEUE_NODE_MAX)) {
        snprintf(err, errlen, "bad node id (1..%d of [A-Za-z0-9._:-])", QUEUE_NODE_MAX);
        goto err;
    }
    snprintf(c->node, sizeof(c->node), "%s", node);
    c->shards = cfg->shards ? cfg->shards : QUEUE_SHARDS_DEFAULT;
    c->inflight_max = cfg->inflight_max ? cfg->inflight_max : QUEUE_INFLIGHT_DEFAULT;
    c->op_timeout_ms = cfg->op_timeout_ms ? cfg->op_timeout_ms : QUEUE_OP_TIMEOUT_MS_DEFAULT;
    uint32_t rmin = cfg->reconnect_min_ms ? cfg->reconnect_min_ms : QUEUE_RECONNECT_MIN_MS_DEFAULT;
    uint32_t rmax = cfg->reconnect_max_ms ? cfg->reconnect_max_ms : QUEUE_RECONNECT_MAX_MS_DEFAULT;
    c->lease_ms = cfg->lease_ms ? cfg->lease_ms : QUEUE_CONSUMER_LEASE_MS_DEFAULT;
    c->conc =
        cfg->concurrency_per_dest ? cfg->concurrency_per_dest : QUEUE_CONSUMER_CONCURRENCY_DEFAULT;
    c->retry_base_ms =
        cfg->retry_base_ms ? cfg->retry_base_ms : QUEUE_CONSUMER_RETRY_BASE_MS_DEFAULT;
    c->retry_max_ms = cfg->retry_max_ms ? cfg->retry_max_ms : QUEUE_CONSUMER_RETRY_MAX_MS_DEFAULT;
    c->lifetime_ms = cfg->lifetime_ms ? cfg->lifetime_ms : QUEUE_CONSUMER_LIFETIME_MS_DEFAULT;
    c->crash_max =
        cfg->attempts_crash_max ? cfg->attempts_crash_max : QUEUE_CONSUMER_CRASH_MAX_DEFAULT;
    c->batch = cfg->claim_batch ? cfg->claim_batch : QUEUE_CONSUMER_BATCH_DEFAULT;
    c->event_cb = cfg->event_cb;
    c->event_arg = cfg->event_arg;
    if (c->shards > QUEUE_SHARDS_MAX || c->inflight_max < 4 ||
        c->inflight_max > QUEUE_INFLIGHT_MAX || rmin > rmax ||
        c->lease_ms < QUEUE_CONSUMER_LEASE_MS_MIN || c->conc > QUEUE_CONSUMER_CONCURRENCY_MAX ||
        c->batch > QUEUE_CONSUMER_BATCH_MAX || c->retry_base_ms > c->retry_max_ms ||
        c->retry_max_ms > c->lifetime_ms || c->lifetime_ms > (uint64_t)INT64_MAX / 4) {
        snprintf(err, errlen, "consumer limits out of range");
        goto err;
    }
    c->busy_hint = calloc(c->shards, 1);
    c->more_hint = calloc(c->shards, 1);
    c->anchor = calloc(c->shards, sizeof(*c->anchor));
    if (c->busy_hint == NULL || c->more_hint == NULL || c->anchor == NULL)
        goto nomem;
    c->cache = cfg->cache;
    if (c->cache == NULL) {
        c->cache = queue_consumer_cache_new(QC_PRE_MAX);
        c->own_cache = true;
        if (c->cache == NULL)
            goto nomem;
    }
    if (getrandom(&c->rng, sizeof(c->rng), 0) != (ssize_t)sizeof(c->rng))
        c->rng = (uint64_t)wall_ms() ^ (uint64_t)(uintptr_t)c;
    if (queue_conn_init(&c->rc, &c->loop, &qc_conn_ops, c, cfg->address, cfg->username,
                        cfg->password, c->op_timeout_ms, rmin, rmax, rng_next(c), err, errlen) < 0)
        goto err;
    queue_conn_start(&c->rc);
    return c;
nomem:
    snprintf(err, errlen, "out of memory");
err:
    if (c->own_cache)
        queue_consumer_cache_free(c->cache);
    free(c->busy_hint);
    free(c->more_hint);
    free(c->anchor);
    free(c);
    return NULL;
}

void queue_consumer_free(struct queue_consumer *c)
{
    if (c == NULL)
        return;
    if (c->fin_timer != NULL)
        c->loop.ops->timer_cancel(c->loop.loop, c->fin_timer);
    queue_conn_free(&c->rc); /* outstanding commands end in on_reply while freeing */
    while (c->jobs != NULL) {
        struct qc_job *j = c->jobs;
        job_del(c, j);
        j->destroy(j);
    }
    if (c->own_cache)
        queue_consumer_cache_free(c->cache);
    free(c->busy_hint);
    free(c->more_hint);
    free(c->anchor);
    free(c);
}

enum queue_conn_state queue_consumer_state(const struct queue_consumer *c, const char **last_error)
{
    if (last_error)
        *last_error = c->rc.last_error;
    return c->rc.state;
}

void queue_consumer_get_stats(const struct queue_consumer *c, struct queue_consumer_stats *out)
{
    *out = c->st;
    out->connects = c->rc.connects;
    out->disconnects = c->rc.disconnects;
    out->timeouts = c->rc.timeouts;
    out->inflight = c->inflight;
}

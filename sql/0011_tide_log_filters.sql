-- The gap-safe global read learns three things: to read every partition at once (a
-- processor over all tenants), to keep only one shard of the streams (a sharded processor,
-- by a hash of the stream id), and to say each event's partition and schema version.

-- The rows a filtered read walks, in cursor order: of one partition, or of all when
-- p_partition is NULL (two statements, so that one partition's read stays pruned to it).
CREATE OR REPLACE FUNCTION tide_log_walk(p_xid xid8, p_pos bigint, p_max bigint, p_partition text)
RETURNS TABLE (x xid8, g bigint, t text, s text, p bigint, part text)
LANGUAGE plpgsql STABLE
SET enable_sort = off SET enable_bitmapscan = off SET jit = off
AS $tide_log_walk$
BEGIN
    IF p_partition IS NULL THEN
        RETURN QUERY
            SELECT m.transaction_id, m.global_position, m.message_type, m.stream_id,
                   m.stream_position, m.partition
              FROM emt_messages m
             WHERE NOT m.is_archived
               AND (m.transaction_id, m.global_position) > (p_xid, p_pos)
               AND m.transaction_id < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY m.transaction_id, m.global_position
             LIMIT p_max;
        RETURN;
    END IF;
    RETURN QUERY
        SELECT m.transaction_id, m.global_position, m.message_type, m.stream_id,
               m.stream_position, m.partition
          FROM emt_messages m
         WHERE m.partition = p_partition AND NOT m.is_archived
           AND (m.transaction_id, m.global_position) > (p_xid, p_pos)
           AND m.transaction_id < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY m.transaction_id, m.global_position
         LIMIT p_max;
END;
$tide_log_walk$;

-- Which of p_shards shards a stream id falls in: the same answer on every server (the hash
-- hash partitioning uses), 0 when there is one shard.
CREATE OR REPLACE FUNCTION tide_shard_of(p_stream text, p_shards int) RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $tide_shard_of$
    SELECT CASE WHEN p_shards > 1
                THEN ((hashtextextended(p_stream, 0) & 9223372036854775807) % p_shards)::int
                ELSE 0 END;
$tide_shard_of$;

-- The read itself: p_partition NULL reads all partitions; p_types (NULL: all) and the shard
-- p_shard of p_shards (p_shards <= 1: all streams) filter on the server. A filtered read
-- ends with a marker row (stream_id NULL) at the last row it walked, so the cursor moves
-- past the rows left out.
DROP FUNCTION IF EXISTS tide_read_all(xid8, bigint, bigint, text, text[]);
CREATE OR REPLACE FUNCTION tide_read_all(
    p_xid xid8, p_pos bigint, p_max bigint, p_partition text, p_types text[],
    p_shard int, p_shards int
) RETURNS TABLE (stream_id text, stream_position bigint, global_position bigint,
                 transaction_id xid8, message_type text, message_data jsonb,
                 message_metadata jsonb, message_id text, created timestamptz,
                 partition text, message_schema_version text)
LANGUAGE plpgsql STABLE
SET enable_sort = off SET enable_bitmapscan = off SET jit = off
AS $tide_read_all$
BEGIN
    IF p_types IS NULL AND coalesce(p_shards, 1) <= 1 THEN
        IF p_partition IS NULL THEN
            RETURN QUERY
                SELECT m.stream_id, m.stream_position, m.global_position, m.transaction_id,
                       m.message_type, m.message_data, m.message_metadata, m.message_id,
                       m.created, m.partition, m.message_schema_version
                  FROM emt_messages m
                 WHERE NOT m.is_archived
                   AND (m.transaction_id, m.global_position) > (p_xid, p_pos)
                   AND m.transaction_id < pg_snapshot_xmin(pg_current_snapshot())
                 ORDER BY m.transaction_id, m.global_position
                 LIMIT p_max;
            RETURN;
        END IF;
        RETURN QUERY
            SELECT m.stream_id, m.stream_position, m.global_position, m.transaction_id,
                   m.message_type, m.message_data, m.message_metadata, m.message_id,
                   m.created, m.partition, m.message_schema_version
              FROM emt_messages m
             WHERE m.partition = p_partition AND NOT m.is_archived
               AND (m.transaction_id, m.global_position) > (p_xid, p_pos)
               AND m.transaction_id < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY m.transaction_id, m.global_position
             LIMIT p_max;
        RETURN;
    END IF;
    RETURN QUERY
        WITH walked AS MATERIALIZED (
            SELECT * FROM tide_log_walk(p_xid, p_pos, p_max, p_partition)
        ), rows AS (
            SELECT 0 AS k, w.x, w.g, m.stream_id, m.stream_position, m.message_type,
                   m.message_data, m.message_metadata, m.message_id, m.created, m.partition,
                   m.message_schema_version
              FROM walked w
              JOIN emt_messages m ON m.stream_id = w.s AND m.stream_position = w.p
                                 AND m.partition = w.part AND NOT m.is_archived
             WHERE (p_types IS NULL OR w.t = ANY (p_types))
               AND (coalesce(p_shards, 1) <= 1 OR tide_shard_of(w.s, p_shards) = p_shard)
            UNION ALL
            SELECT 1, l.x, l.g, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
              FROM (SELECT w.x, w.g FROM walked w ORDER BY w.x DESC, w.g DESC LIMIT 1) l
        )
        SELECT r.stream_id, r.stream_position, r.g, r.x, r.message_type, r.message_data,
               r.message_metadata, r.message_id, r.created, r.partition,
               r.message_schema_version
          FROM rows r ORDER BY r.k, r.x, r.g;
END;
$tide_read_all$;

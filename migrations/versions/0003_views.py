"""views: SQL views and a table macro for people who inspect the store

Views (all read-only, over the tables of 0001/0002):

* ``v_level_stats(version_id, tree, level, n_nodes, n_leaves, n_internal, mean_fanout,
  min_fanout, max_fanout)`` -- per-level node counts and fan-out (children of the internal
  nodes of that level), for every tree of every tree/forest version.
* ``v_leaf_occupancy(version_id, tree, node, level, n_leaves, n_items)`` -- a leaf holds exactly
  one item in grove's trees, so occupancy is measured one level up: for every node whose
  children include leaves (the bottom "clusters"), how many leaves and distinct items sit under
  it. Uneven numbers show an unbalanced tree.
* ``v_multi_leaf_items(version_id, tree, item, n_leaves, leaves)`` -- items that sit at more
  than one leaf of a tree (RecForest's complete trees duplicate items).
* ``v_path_sizes(version_id, path, n_items, mean_score)`` -- Deep Retrieval: items per path.
* ``v_path_summary(version_id, arity, depth, used_paths, top_path_size, mean_size,
  empty_share)`` -- per codes version: empty_share = 1 - used paths / K^D; mean_size over
  used paths.
* ``v_lineage(version_id, ancestor_id, depth, index_name, method, created_at)`` -- every version
  with itself (depth 0) and each of its ancestors along parent_id (recursive CTE).
* ``v_versions`` -- versions with item/node counts, aliases and the latest value of every
  metric (role/name@k=value).
* ``v_alias_log`` -- the alias event log, oldest first.

Table macro ``item_moves(v1, v2)`` -- items whose leaf or path differs between versions v1 and
v2, per tree (slot j for codes), with the first leaf/path of each side (NULL where absent).
Example: ``SELECT count(*) FROM item_moves(3, 4) WHERE tree = 0``.

PostgreSQL: the same views through `_postgres` (``list`` -> ``array_agg``, the JSON paths
``shape ->> '$.x'`` -> ``shape::json ->> 'x'``, DOUBLE -> DOUBLE PRECISION, ``round`` on
numeric, averages as DOUBLE PRECISION as DuckDB gives them) and ``item_moves`` as a SQL function
returning a table (`ITEM_MOVES_PG`); ``arg_min(path, key)`` becomes ``DISTINCT ON`` ordered by
the key, which picks the same row (the keys of one (tree, item) never tie: leaves differ, and a
codes row is unique per (j, item)).

Revision ID: 0003
Revises: 0002
"""

import re

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

VIEWS = {
    "v_level_stats": """
WITH fan AS (
    SELECT version_id, tree, parent AS node, count(*) AS n_children
    FROM nodes WHERE parent >= 0 GROUP BY version_id, tree, parent)
SELECT n.version_id, n.tree, n.level, count(*) AS n_nodes,
       count(*) FILTER (WHERE n.item >= 0) AS n_leaves, count(f.node) AS n_internal,
       avg(f.n_children) AS mean_fanout, min(f.n_children) AS min_fanout,
       max(f.n_children) AS max_fanout
FROM nodes n LEFT JOIN fan f
  ON f.version_id = n.version_id AND f.tree = n.tree AND f.node = n.node
GROUP BY n.version_id, n.tree, n.level""",
    "v_leaf_occupancy": """
SELECT version_id, tree, parent AS node, level - 1 AS level, count(*) AS n_leaves,
       count(DISTINCT item) AS n_items
FROM nodes WHERE item >= 0 AND parent >= 0
GROUP BY version_id, tree, parent, level""",
    "v_multi_leaf_items": """
SELECT version_id, tree, item, count(*) AS n_leaves, list(leaf ORDER BY leaf) AS leaves
FROM item_paths WHERE leaf IS NOT NULL
GROUP BY version_id, tree, item HAVING count(*) > 1""",
    "v_path_sizes": """
SELECT p.version_id, p.path, count(DISTINCT p.item) AS n_items, avg(p.score) AS mean_score
FROM item_paths p JOIN versions v ON v.id = p.version_id
WHERE v.kind = 'codes'
GROUP BY p.version_id, p.path""",
    "v_path_summary": """
SELECT s.version_id, CAST(v.shape ->> '$.arity' AS BIGINT) AS arity,
       CAST(v.shape ->> '$.depth' AS BIGINT) AS depth, count(*) AS used_paths,
       max(s.n_items) AS top_path_size, avg(s.n_items) AS mean_size,
       1 - count(*) / pow(CAST(v.shape ->> '$.arity' AS DOUBLE),
                          CAST(v.shape ->> '$.depth' AS DOUBLE)) AS empty_share
FROM v_path_sizes s JOIN versions v ON v.id = s.version_id
GROUP BY s.version_id, v.shape""",
    "v_lineage": """
WITH RECURSIVE chain(version_id, ancestor_id, depth) AS (
    SELECT id, id, 0 FROM versions
    UNION ALL
    SELECT c.version_id, v.parent_id, c.depth + 1
    FROM chain c JOIN versions v ON v.id = c.ancestor_id
    WHERE v.parent_id IS NOT NULL AND c.depth < 100000)
SELECT c.version_id, c.ancestor_id, c.depth, a.index_name, a.method, a.created_at
FROM chain c JOIN versions a ON a.id = c.ancestor_id""",
    "v_versions": """
WITH ranked AS (
    SELECT *, row_number() OVER (PARTITION BY version_id, role, name, k
                                 ORDER BY recorded_at DESC) AS rn
    FROM metrics),
latest AS (
    SELECT version_id, string_agg(role || '/' || name || '@' || CAST(k AS VARCHAR) || '='
                                  || CAST(round(value, 4) AS VARCHAR), ', '
                                  ORDER BY role, name, k) AS metrics
    FROM ranked WHERE rn = 1 GROUP BY version_id),
al AS (
    SELECT version_id, string_agg(alias, ', ' ORDER BY alias) AS aliases
    FROM aliases GROUP BY version_id)
SELECT v.id, v.index_name, v.kind, v.method, v.parent_id, v.dataset, v.split, v.status,
       v.created_at, CAST(v.shape ->> '$.n_items' AS BIGINT) AS n_items,
       CAST(v.shape ->> '$.total_nodes' AS BIGINT) AS n_nodes, al.aliases, latest.metrics,
       v.note
FROM versions v LEFT JOIN latest ON latest.version_id = v.id
LEFT JOIN al ON al.version_id = v.id""",
    "v_alias_log": """
SELECT id, "at", index_name, alias, action, from_version, to_version, reason
FROM alias_events ORDER BY id""",
}

ITEM_MOVES = """
CREATE MACRO item_moves(v1, v2) AS TABLE
WITH a AS (
    SELECT tree, item, min(leaf) AS leaf, arg_min(path, coalesce(leaf, 0)) AS path
    FROM item_paths WHERE version_id = v1 GROUP BY tree, item),
b AS (
    SELECT tree, item, min(leaf) AS leaf, arg_min(path, coalesce(leaf, 0)) AS path
    FROM item_paths WHERE version_id = v2 GROUP BY tree, item)
SELECT coalesce(a.tree, b.tree) AS tree, coalesce(a.item, b.item) AS item,
       a.leaf AS old_leaf, b.leaf AS new_leaf, a.path AS old_path, b.path AS new_path
FROM a FULL OUTER JOIN b ON a.tree = b.tree AND a.item = b.item
WHERE a.path IS DISTINCT FROM b.path OR a.leaf IS DISTINCT FROM b.leaf"""


ITEM_MOVES_PG = """
CREATE FUNCTION item_moves(v1 BIGINT, v2 BIGINT)
RETURNS TABLE (tree INTEGER, item BIGINT, old_leaf BIGINT, new_leaf BIGINT, old_path INTEGER[],
               new_path INTEGER[])
LANGUAGE sql STABLE AS $$
WITH a AS (
    SELECT DISTINCT ON (p.tree, p.item) p.tree, p.item,
           min(p.leaf) OVER (PARTITION BY p.tree, p.item) AS leaf, p.path
    FROM item_paths p WHERE p.version_id = v1 ORDER BY p.tree, p.item, coalesce(p.leaf, 0)),
b AS (
    SELECT DISTINCT ON (p.tree, p.item) p.tree, p.item,
           min(p.leaf) OVER (PARTITION BY p.tree, p.item) AS leaf, p.path
    FROM item_paths p WHERE p.version_id = v2 ORDER BY p.tree, p.item, coalesce(p.leaf, 0))
SELECT coalesce(a.tree, b.tree), coalesce(a.item, b.item), a.leaf, b.leaf, a.path, b.path
FROM a FULL OUTER JOIN b ON a.tree = b.tree AND a.item = b.item
WHERE a.path IS DISTINCT FROM b.path OR a.leaf IS DISTINCT FROM b.leaf
$$"""

# DuckDB text -> PostgreSQL text, applied to every view (checked by tests/test_migrations.py)
_PG_SPELLING = (
    (r"\blist\(", "array_agg("),
    (r"(\w+\.)?shape ->> '\$\.(\w+)'", r"(\1shape::json ->> '\2')"),
    (r"\bAS DOUBLE\)", "AS DOUBLE PRECISION)"),
    (r"round\(value, 4\)", "CAST(round(CAST(value AS NUMERIC), 4) AS DOUBLE PRECISION)"),
    (r"\b(avg\([\w.]+\))", r"CAST(\1 AS DOUBLE PRECISION)"),
)


def _postgres(sql: str) -> str:
    for pattern, replacement in _PG_SPELLING:
        sql = re.sub(pattern, replacement, sql)
    return sql


def upgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    for name, sql in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {_postgres(sql) if pg else sql}")
    op.execute(ITEM_MOVES_PG if pg else ITEM_MOVES)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION item_moves(BIGINT, BIGINT)")
    else:
        op.execute("DROP MACRO TABLE item_moves")
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW {name}")

"""Plain-Python reference implementations (dicts and sets, no numpy tricks).

The projection here is written straight from the semantics in ARCHITECTURE.md;
the engine's kernels are compared with it on random streams.  Spatial answers
are brute force over the reference's node positions.
"""
from __future__ import annotations

import math

GRAPH_CREATED, GRAPH_UPDATED, GRAPH_ARCHIVED, GRAPH_DELETED = 1, 2, 3, 4
NODE_ADDED, NODE_UPDATED, NODE_MOVED, NODE_REMOVED = 10, 11, 12, 13
EDGE_ADDED, EDGE_UPDATED, EDGE_REMOVED = 20, 21, 23
KNOWN = {1, 2, 3, 4, 10, 11, 12, 13, 20, 21, 23}


def reference_rows(table) -> list[dict]:
    """Rows of an Arrow table or batch of events in EVENT_SCHEMA for
    :meth:`RefProjection.apply`: dicts, with ``occurred_at`` as µs since the epoch."""
    rows = table.to_pylist()
    for r in rows:
        if r.get("occurred_at") is not None:
            r["occurred_at"] = int(r["occurred_at"].timestamp() * 1_000_000)
    return rows


class RefProjection:
    def __init__(self):
        self.version = 0
        self.graphs = {}  # gid -> dict(name, created_at, last_modified, archived)
        self.nodes = {}  # (gid, nid) -> dict(pos, label, node_type)
        self.edges = {}  # (gid, eid) -> dict(src, dst, weight, edge_type)
        self.adj = {}  # (gid, nid) -> set of (gid, eid) touching it
        self.members = {}  # gid -> set of (gid, nid)
        self.applied = self.ignored = self.skipped = 0

    def apply(self, rows):
        """rows: dicts with the EVENT_SCHEMA column names (ids as bytes)."""
        for r in rows:
            seq = r.get("seq")
            if seq is not None and seq <= self.version:
                self.skipped += 1
                continue
            self.version = seq if seq is not None else self.version + 1
            if self._one(r):
                self.applied += 1
            else:
                self.ignored += 1

    def _one(self, r) -> bool:
        k, g, t = r.get("event_type"), r.get("graph_id"), r.get("occurred_at")
        if g is None or t is None:
            return False
        if k == GRAPH_CREATED:
            if g not in self.graphs:
                self.graphs[g] = dict(name=None, created_at=t, last_modified=t, archived=False)
                self.members[g] = set()
            if r.get("name") is not None:
                self.graphs[g]["name"] = r["name"]
            self.graphs[g]["last_modified"] = t
            return True
        if k not in KNOWN:
            return False
        if g not in self.graphs:
            return False
        gr = self.graphs[g]
        if k == GRAPH_UPDATED:
            if r.get("name") is not None:
                gr["name"] = r["name"]
        elif k == GRAPH_ARCHIVED:
            gr["archived"] = True
        elif k == GRAPH_DELETED:
            del self.graphs[g]
            for key in self.members.pop(g):
                del self.nodes[key]
                for ek in self.adj.pop(key):
                    self.edges.pop(ek, None)
            return True
        elif k in (NODE_ADDED, NODE_UPDATED, NODE_MOVED, NODE_REMOVED):
            if not self._node(r, g, k):
                return False
        else:
            if not self._edge(r, g, k):
                return False
        gr["last_modified"] = t
        return True

    def _node(self, r, g, k) -> bool:
        nid = r.get("node_id")
        if nid is None:
            return False
        pos = None
        if r.get("x") is not None and r.get("y") is not None and r.get("z") is not None:
            pos = (r["x"], r["y"], r["z"])
            if not all(math.isfinite(c) for c in pos):
                return False
        key = (g, nid)
        if k == NODE_ADDED:
            node = self.nodes.get(key)
            if node is None:
                node = self.nodes[key] = dict(pos=None, label=None, node_type=None)
                self.adj[key] = set()
                self.members[g].add(key)
        else:
            node = self.nodes.get(key)
            if node is None:
                return False
            if k == NODE_REMOVED:
                del self.nodes[key]
                self.members[g].discard(key)
                for ek in self.adj.pop(key):
                    e = self.edges.pop(ek)
                    self.adj.get((g, e["src"]), set()).discard(ek)
                    self.adj.get((g, e["dst"]), set()).discard(ek)
                return True
            if k == NODE_MOVED and pos is None:
                return False
        if pos is not None:
            node["pos"] = pos
        if k != NODE_MOVED:
            if r.get("node_type") is not None:
                node["node_type"] = r["node_type"]
            if r.get("name") is not None:
                node["label"] = r["name"]
        return True

    def _edge(self, r, g, k) -> bool:
        eid = r.get("edge_id")
        if eid is None:
            return False
        key = (g, eid)
        if k == EDGE_ADDED:
            s, d = r.get("source_id"), r.get("target_id")
            if s is None or d is None:
                return False
            if (g, s) not in self.nodes or (g, d) not in self.nodes:
                return False
            e = self.edges.get(key)
            if e is None:
                e = self.edges[key] = dict(weight=None, edge_type=None)
            else:
                self.adj[(g, e["src"])].discard(key)
                self.adj[(g, e["dst"])].discard(key)
            e["src"], e["dst"] = s, d
            self.adj[(g, s)].add(key)
            self.adj[(g, d)].add(key)
        else:
            e = self.edges.get(key)
            if e is None:
                return False
            if k == EDGE_REMOVED:
                del self.edges[key]
                self.adj[(g, e["src"])].discard(key)
                self.adj[(g, e["dst"])].discard(key)
                return True
        if r.get("weight") is not None:
            e["weight"] = r["weight"]
        if r.get("edge_type") is not None:
            e["edge_type"] = r["edge_type"]
        return True

    # -- views ---------------------------------------------------------------
    def summaries(self) -> dict:
        out = {}
        ecount = {}
        for (g, _e) in self.edges:
            ecount[g] = ecount.get(g, 0) + 1
        for g, gr in self.graphs.items():
            out[g] = dict(
                name=gr["name"],
                node_count=len(self.members[g]),
                edge_count=ecount.get(g, 0),
                created_at=gr["created_at"],
                last_modified=gr["last_modified"],
                archived=gr["archived"],
            )
        return out

    def totals(self) -> dict:
        return dict(graphs=len(self.graphs), nodes=len(self.nodes), edges=len(self.edges))

    def positioned_nodes(self, graph_id=None):
        """[(graph_id, node_id, (x, y, z))] of live nodes with a position."""
        return [
            (g, n, node["pos"])
            for (g, n), node in self.nodes.items()
            if node["pos"] is not None and (graph_id is None or g == graph_id)
        ]


def brute_radius(points, center, radius):
    """Indices i with |points[i] - center| <= radius, in float64, as a set."""
    cx, cy, cz = center
    r2 = radius * radius
    out = set()
    for i, (x, y, z) in enumerate(points):
        dx, dy, dz = x - cx, y - cy, z - cz
        if dx * dx + dy * dy + dz * dz <= r2:
            out.add(i)
    return out


def brute_knn(points, center, k):
    """Distances of the k nearest points, ascending."""
    cx, cy, cz = center
    d = sorted(math.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) for x, y, z in points)
    return d[:k]


def brute_box(points, lo, hi):
    return {
        i for i, p in enumerate(points)
        if all(lo[a] <= p[a] <= hi[a] for a in range(3))
    }

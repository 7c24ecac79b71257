"""Peak memory of a projection of many live nodes and edges (profile sizes)."""
from cim_flow import Engine

from .common import SIZES
from .datasets import bulk_graph


class ProjectionMemory:
    timeout = 1800
    number = 1
    repeat = 1

    def peakmem_projection_nodes_edges(self):
        """SIZES['mem_nodes'] live nodes and SIZES['mem_edges'] live edges, grown from empty."""
        eng = Engine()
        for b in bulk_graph(SIZES["mem_nodes"], SIZES["mem_edges"]):
            eng.apply(b)
        t = eng.totals()
        assert t["nodes"] == SIZES["mem_nodes"] and t["edges"] == SIZES["mem_edges"], t

    def peakmem_projection_presized(self):
        """The same projection with capacities reserved up front (no growth copies)."""
        eng = Engine(node_capacity=SIZES["mem_nodes"], edge_capacity=SIZES["mem_edges"])
        for b in bulk_graph(SIZES["mem_nodes"], SIZES["mem_edges"]):
            eng.apply(b)
        t = eng.totals()
        assert t["nodes"] == SIZES["mem_nodes"] and t["edges"] == SIZES["mem_edges"], t

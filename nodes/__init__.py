"""HiGFA's ComfyUI nodes: thin adapters over the `higfa` core (one concept per module)."""

from ._comfy import ComfyExtension, io
from . import routes
from .classifier import HiGFAClassifierEnsemble, HiGFAClassifierLoader
from .contour import HiGFAContourRanges, HiGFAContourTransform
from .dataset import HiGFALoadImageFolder, HiGFASaveImageFolder
from .filter import HiGFAConfidenceFilter
from .guider import HiGFAGuider
from .sampler import HiGFASampler
from .schedule import HiGFASchedule
from .trace import HiGFATrace
from .world import NODES as WORLD_NODES

NODES: list[type[io.ComfyNode]] = [
    HiGFASchedule, HiGFAContourTransform, HiGFAContourRanges, HiGFAClassifierLoader, HiGFAGuider, HiGFASampler,
    HiGFATrace, HiGFALoadImageFolder, HiGFASaveImageFolder, *WORLD_NODES, HiGFAConfidenceFilter,
    HiGFAClassifierEnsemble,
]


class HiGFAExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> HiGFAExtension:
    routes.register()  # 0.3.75 never calls on_load; this runs once, while custom nodes load
    return HiGFAExtension()

"""Where the heavy stages run: this process (`engine: local`) or a Ray cluster (`engine: ray`).

`cluster` connects and checks a cluster before any work, `embed` runs the embed stage on Ray
actors that write the local cache's shards, `search` runs the near-duplicate search's tiles and
cluster jobs as Ray tasks. Ray is an optional extra (`pip install 'leanset[ray]'`): nothing here
imports it until a flow asks for `engine: ray`.
"""

from leanset.pipelines.engine.cluster import ClusterInfo, EngineError, ray_session

__all__ = ["ClusterInfo", "EngineError", "ray_session"]

"""``lit-kd study``: the compression study as one job (stage graph, manifests, report)."""

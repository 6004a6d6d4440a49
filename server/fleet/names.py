"""The names both sides of the fleet agree on, kept apart so the service side imports none of
the node side."""

NAMESPACE = "wondercraft"
SLOT = "wondercraft_slot"  # the custom resource: one per learn cycle a node may run at once


def agent_name(node_id: str) -> str:
    return f"wondercraft-node-{node_id}"

"""Federated training: jobs checked and staged (jobs), queued fairly into slots (scheduler),
run one attempt at a time in sandboxes (runner), grouped into rounds by a pure book (rounds),
applied by one consumer (service), and the shared model read and served (shared_model)."""

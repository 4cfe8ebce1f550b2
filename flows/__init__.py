"""maskforge.flows, the top layer: Prefect flows that only wire tasks, the CLI, `maskforge serve` and deployments."""

"""The pipeline's stages (prepare, train, evaluate, register) and the Prefect flows that chain them."""

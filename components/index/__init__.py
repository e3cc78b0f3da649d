"""The retrieval index: ScaNN over the catalog's candidate-tower embeddings, its exports and its evaluation."""

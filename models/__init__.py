"""Feature contract, preprocessing and the TFRS models of towerflow."""

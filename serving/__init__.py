"""Online side of towerflow: model server, clients, feature store and the recommender service."""

"""The demand side: the market's offers and quotes, clusters from deploy to their end (placement,
provisioning, healing, autoscaling) and the jobs customers run on them."""

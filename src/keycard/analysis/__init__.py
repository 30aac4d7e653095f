"""Pure analyses over the engine: Cloud Asset Inventory's IAM policy analysis and searches."""

"""The pure decision engine: stdlib and CEL only; no store, http or identity imports."""

"""Model families (one module per family behind one small interface) and the MLflow store."""

"""Model families (one file per architecture), the model package and its registry."""

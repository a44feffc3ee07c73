"""ring twin: placeholder until implemented."""

"""merkle twin: placeholder until implemented."""

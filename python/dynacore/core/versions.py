"""versions twin: placeholder until implemented."""

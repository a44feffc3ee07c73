"""wire twin: placeholder until implemented."""

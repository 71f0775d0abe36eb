"""Search over a loaded index version: filters (`filters`), reciprocal rank fusion (`fusion`) and the
three modes, vector, keyword and hybrid (`engine`)."""

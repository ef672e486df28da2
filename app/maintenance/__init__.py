"""Operations on the store as a whole (DESIGN §6): retention, garbage collection and verification, with their runs."""

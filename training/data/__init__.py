"""Raw platform logs → one clean, fused, per-person timeline."""

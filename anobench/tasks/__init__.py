"""What each CLI verb does, as plain functions of a composed config."""

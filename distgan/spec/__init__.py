"""What users write: the job spec (`job`) and the search spec (`search`), typed and validated."""

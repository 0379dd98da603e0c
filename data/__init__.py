"""persona.data: raw footage -> datasets (frames + captions, voice clips + transcripts)."""

"""Getting the data: Socrata and NOAA clients, validation with quarantine, the versioned dataset."""

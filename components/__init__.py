"""The model, one idea per file. Importable with torch alone; never imports the top level."""

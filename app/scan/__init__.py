"""Scan parsers (DESIGN §3): candidate templates in a Git tree, their headers, surveys and parameter schema."""

"""From a file to text, and from text to chunks."""

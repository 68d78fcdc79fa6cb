"""DynamoDB item families, one module each: what an item looks like, how it is written, and the outcomes."""

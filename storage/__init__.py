"""Content identity and the S3 blob store: pure logic plus one boto3 boundary, configured by arguments only."""

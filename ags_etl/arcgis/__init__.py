"""ArcGIS REST specifics: HTTP client, auth, paging planner, Esri JSON, field types."""

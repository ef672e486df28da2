"""HTTP controllers and wire schemas. The only place besides `app.main` that imports Litestar."""

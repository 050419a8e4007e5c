"""The book layer: the Jupyter Book built from run records. Tables, charts and glue (`report`), the figures
(`figures`), one module per page (`chapters`), the SVG checks (`svgcheck`) and the build (`build`). Imports the grid
layer and below; a chapter never imports another chapter."""

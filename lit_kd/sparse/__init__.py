"""SparseML helpers shared by the SparseMLRecipe callback, ONNX export and the benchmarks."""

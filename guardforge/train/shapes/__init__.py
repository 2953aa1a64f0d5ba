"""tiny-shapes: the procedural data, the detector, the adherence measure and the DreamBooth study of the embedded
default model. Training it is asset building, in guardforge_build/shapes."""

"""Temporally coherent video stylization (Ruder, Dosovitskiy and Brox, GCPR 2016).

``flow`` (optical flow, warping, the consistency mask) and ``io`` (PyAV decoding and encoding,
folders of frames) work on tensors and files; ``run`` stylizes a clip frame by frame, resumably;
``score`` measures a stylized clip's temporal warping error and its style and content distances.
"""

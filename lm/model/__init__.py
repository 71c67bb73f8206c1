"""The model room: configs, mixer families, the network, parameter/FLOP counting, μP, presets, decoding, upcycling."""

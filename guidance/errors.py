"""One shape for every input error: the node, the input, what is wrong and what is valid."""


def input_error(node: str, input_name: str, message: str) -> ValueError:
    return ValueError(f"{node}: input '{input_name}': {message}")

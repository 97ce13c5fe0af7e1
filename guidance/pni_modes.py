"""The names PNI's settings take, shared by guidance/pni.py (the math) and guidance/inversion_data.py (the
INVERSION that carries them) without either importing the other."""

PROX_MODES = ("L1", "L0")          # prox_lambda: L1 soft threshold (Eq. 9), L0 hard threshold (Eq. 10)
LAMBDA_MODES = ("fixed", "quantile")  # lambda as given, or per step from a quantile of |eps_tar - eps_src|
DEFAULT_QUANTILE = 0.7             # ProxEdit's default quantile

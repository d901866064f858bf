# Shared look of every figure (loaded by each docs/plots/*.gp).
# The caller sets `datadir` (the CSV files) and `outfile` (the SVG to write), see docs/CMakeLists.txt.
if (!exists("outfile")) outfile = "figure.svg"
if (!exists("datadir")) datadir = "."
set terminal svg size 760,460 dynamic enhanced font "DejaVu Sans,12" background rgb "white"
set output outfile
set datafile separator ","
set datafile columnheaders  # the first line of every CSV names its columns; scripts use the names
set key noautotitle
set border 3 lw 1 lc rgb "#444444"
set tics nomirror textcolor rgb "#333333"
set grid ytics lc rgb "#dddddd" lw 1 dt 1
# One colour per idea, the same on every figure.
c_plain  = "#4c72b0"  # plain / naive / MHA
c_cached = "#dd8452"  # cache / GQA
c_mqa    = "#8172b3"  # MQA
c_mla    = "#55a868"  # latent / absorbed / MLA
c_extra  = "#c44e52"

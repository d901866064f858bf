# The figures the READMEs show, committed under docs/figures/, and the ones the plots target draws
# into the build (docs/CMakeLists.txt). One script, three jobs:
#
#   cmake -DMODE=stage  -DSOURCE=<docs/figures> -DBUILT=<build/docs/figures> -DOUT=<dir> -P figures.cmake
#       The images Doxygen reads (IMAGE_PATH): every committed SVG, then every freshly drawn one
#       over it, so the site shows this build's run where there is one, the committed copy where
#       not, and each name exists once.
#   cmake -DMODE=update -DSOURCE=<docs/figures> -DBUILT=<build/docs/figures> -DDOT=<dot> -DPERL=<perl>
#         -P figures.cmake
#       Refresh the committed copies: the drawn figures are copied into docs/figures/, every
#       docs/figures/*.dot is rendered next to it as .svg, every schematic docs/plots/<name>.pl
#       prints docs/figures/<name>.svg, and docs/figures/drawn_on.txt records the machine that
#       drew the timing figures.
#   cmake -DMODE=check (same arguments) -P figures.cmake
#       Compare: the committed dataflow SVGs and schematics with fresh ones, and the committed
#       figures whose data does not depend on timings with this build's; fails naming the files
#       that differ (run figures-update and commit). Timing figures are only listed.
#
# Timing figures differ from machine to machine and from run to run: they are never checked.
cmake_minimum_required(VERSION 3.16)  # IN_LIST in script mode
set(timing_figures ch02_decode_times ch05_decode_step ch05_prefill_chunk ch07_roofline ch07_sweep
                   ch09_cost_per_token
                   ch08_throughput)

if(MODE STREQUAL "stage")
  file(REMOVE_RECURSE "${OUT}")
  file(MAKE_DIRECTORY "${OUT}")
  file(GLOB committed "${SOURCE}/*.svg")
  file(GLOB built "${BUILT}/*.svg")
  foreach(f IN LISTS committed built)
    file(COPY "${f}" DESTINATION "${OUT}")
  endforeach()
  return()
endif()

if(NOT MODE STREQUAL "update" AND NOT MODE STREQUAL "check")
  message(FATAL_ERROR "figures.cmake: MODE must be stage, update or check")
endif()

file(GLOB built "${BUILT}/*.svg")
if(NOT built)
  message(FATAL_ERROR "figures: nothing drawn in ${BUILT} (build the plots target; it needs gnuplot)")
endif()
file(GLOB dots "${SOURCE}/*.dot")
set(tmp "${BUILT}/../figures-check")
file(MAKE_DIRECTORY "${tmp}")

set(differ "")
foreach(dotfile IN LISTS dots)
  get_filename_component(name "${dotfile}" NAME_WE)
  set(target "${tmp}/${name}.svg")
  if(MODE STREQUAL "update")
    set(target "${SOURCE}/${name}.svg")
  endif()
  execute_process(COMMAND "${DOT}" -Tsvg "${dotfile}" -o "${target}" RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "figures: dot failed on ${dotfile}")
  endif()
  if(MODE STREQUAL "check")
    execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files "${target}" "${SOURCE}/${name}.svg"
                    RESULT_VARIABLE same)
    if(NOT same EQUAL 0)
      list(APPEND differ "${name}.svg")
    endif()
  endif()
endforeach()

# The schematics (hand-made, no data): docs/plots/<name>.pl prints docs/figures/<name>.svg.
file(GLOB schematics "${CMAKE_CURRENT_LIST_DIR}/*.pl")
foreach(pl IN LISTS schematics)
  get_filename_component(name "${pl}" NAME_WE)
  set(target "${tmp}/${name}.svg")
  if(MODE STREQUAL "update")
    set(target "${SOURCE}/${name}.svg")
  endif()
  execute_process(COMMAND "${PERL}" "${pl}" OUTPUT_FILE "${target}" RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "figures: ${pl} failed")
  endif()
  if(MODE STREQUAL "check")
    execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files "${target}" "${SOURCE}/${name}.svg"
                    RESULT_VARIABLE same)
    if(NOT same EQUAL 0)
      list(APPEND differ "${name}.svg")
    endif()
  endif()
endforeach()

foreach(f IN LISTS built)
  get_filename_component(name "${f}" NAME_WE)
  if(MODE STREQUAL "update")
    file(COPY "${f}" DESTINATION "${SOURCE}")
  elseif(name IN_LIST timing_figures)
    message(STATUS "figures: ${name}.svg shows timings, not checked (see docs/figures/drawn_on.txt)")
  else()
    execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files "${f}" "${SOURCE}/${name}.svg"
                    RESULT_VARIABLE same)
    if(NOT same EQUAL 0)
      list(APPEND differ "${name}.svg")
    endif()
  endif()
endforeach()

if(MODE STREQUAL "update")
  # Which machine drew the timing figures: the CPU's name and vector extensions (Linux), the date.
  set(cpu "unknown CPU")
  set(simd "")
  if(EXISTS /proc/cpuinfo)
    file(STRINGS /proc/cpuinfo model REGEX "^model name" LIMIT_COUNT 1)
    string(REGEX REPLACE "^model name[ \t]*:[ \t]*" "" cpu "${model}")
    file(STRINGS /proc/cpuinfo flags REGEX "^flags" LIMIT_COUNT 1)
    foreach(ext avx2 avx512f avx512_bf16)
      if(flags MATCHES " ${ext}( |$)")
        string(APPEND simd " ${ext}")
      endif()
    endforeach()
  endif()
  cmake_host_system_information(RESULT ncpu QUERY NUMBER_OF_LOGICAL_CORES)
  string(TIMESTAMP today "%Y-%m-%d")
  list(JOIN timing_figures ", " timing_text)
  file(WRITE "${SOURCE}/drawn_on.txt"
       "The timing figures (${timing_text}) in this folder were drawn on ${today} by\n"
       "`cmake --build build --target figures-update` on: ${cpu}, ${ncpu} logical CPUs,\n"
       "vector extensions:${simd}. Timings on another machine differ; the other figures do not\n"
       "depend on the machine (up to float rounding).\n")
  message(STATUS "figures: docs/figures/ updated; commit it with drawn_on.txt")
  return()
endif()

if(differ)
  list(JOIN differ ", " text)
  message(FATAL_ERROR "figures: committed copies differ from this build's: ${text} "
                      "(cmake --build build --target figures-update, then commit docs/figures/)")
endif()
message(STATUS "figures: the committed figures match this build's (timing figures not checked)")

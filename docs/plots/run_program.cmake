# Runs a chapter program for the figures (docs/CMakeLists.txt, mla_add_plot):
#   cmake -DPROGRAM=<exe> -DRESULTS=<dir> -DEXPECT=<csv;...> [-DJSON_COLUMNS=<key;...>]
#         -P run_program.cmake -- <args>
# The program writes its CSV files into RESULTS (through MLA_RESULTS_DIR); its output goes to
# RESULTS/<program>.log. With JSON_COLUMNS the program prints JSON lines instead (mla_bench --json):
# they become the one EXPECT file, a CSV with those keys as columns (a missing key: empty cell).
# Fails, naming the files, if the program fails or a CSV does not appear (a chapter renamed its
# CSV file: update docs/CMakeLists.txt and the .gp script).
set(args "")
set(after_dashes OFF)
foreach(i RANGE 1 ${CMAKE_ARGC})
  if(i EQUAL CMAKE_ARGC)
    break()
  endif()
  if(after_dashes)
    list(APPEND args "${CMAKE_ARGV${i}}")
  elseif(CMAKE_ARGV${i} STREQUAL "--")
    set(after_dashes ON)
  endif()
endforeach()

get_filename_component(name "${PROGRAM}" NAME)
file(MAKE_DIRECTORY "${RESULTS}")
# One program at a time, even under make -j: the figures show timings, and two benchmarks
# sharing the cores would distort each other.
file(LOCK "${RESULTS}/.run.lock" GUARD PROCESS TIMEOUT 1800)
foreach(csv IN LISTS EXPECT)
  file(REMOVE "${RESULTS}/${csv}")
endforeach()
set(ENV{MLA_RESULTS_DIR} "${RESULTS}")
execute_process(COMMAND "${PROGRAM}" ${args}
  OUTPUT_FILE "${RESULTS}/${name}.log" ERROR_FILE "${RESULTS}/${name}.err.log"
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  file(READ "${RESULTS}/${name}.err.log" err)
  message(FATAL_ERROR "plots: ${name} ${args} failed (${rc}):\n${err}")
endif()
if(JSON_COLUMNS)
  file(STRINGS "${RESULTS}/${name}.log" lines REGEX "^{")
  string(REPLACE ";" "," csv_text "${JSON_COLUMNS}")
  string(APPEND csv_text "\n")
  foreach(line IN LISTS lines)
    set(row "")
    foreach(key IN LISTS JSON_COLUMNS)
      string(JSON value ERROR_VARIABLE missing GET "${line}" "${key}")
      if(missing)
        set(value "")
      endif()
      list(APPEND row "${value}")
    endforeach()
    string(REPLACE ";" "," row "${row}")
    string(APPEND csv_text "${row}\n")
  endforeach()
  list(LENGTH lines n)
  if(n EQUAL 0)
    message(FATAL_ERROR "plots: ${name} ${args} printed no JSON lines (see ${RESULTS}/${name}.log)")
  endif()
  file(WRITE "${RESULTS}/${EXPECT}" "${csv_text}")
endif()
foreach(csv IN LISTS EXPECT)
  if(NOT EXISTS "${RESULTS}/${csv}")
    message(FATAL_ERROR "plots: ${name} ${args} did not write ${csv} into ${RESULTS}; "
                        "the figure expects it (docs/CMakeLists.txt)")
  endif()
endforeach()
